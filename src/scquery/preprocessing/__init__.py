"""Preprocessing: a reference fitted once, and a query processed exactly like it.

- `scales`: what the values are (counts, normalized, log scale) and how they are brought to the
  reference's scale (`detect_values`, `to_linear`, `normalize_parts`);
- `fit`: the single fit of a reference, in passes over blocks of rows, from memory or disk alike
  (`fit_reference`: quality control, normalization, the genes, the record);
- `rows`: the reference's processed rows, made on demand (`ReferenceRows`);
- `align`: a query processed like the reference of a record (`apply_record`: scale, another
  species' genes, gene alignment), with a small report (`Alignment`).

Every step reads a `scquery.values.Cells` (the values, taken once from the AnnData) and works on CSR
float32 matrices; nothing here writes into an AnnData.
"""
