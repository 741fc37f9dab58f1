"""Processing a query exactly like the reference of a preprocessing record: its scale recognized and
undone, normalized on its own genes, another species' genes mapped (`scquery.orthologs`), then its
genes aligned to the record's. The result is a matrix and a small report (`Alignment`); what of it the
user sees is written by `scquery.provenance.write_run`, not here.
"""

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import ScqueryError, TooFewGenes
from ..orthologs import (
    SPECIES,
    builtin_map,
    detect_species,
    gene_lookup,
    map_genes,
    match_keys,
    read_gene_map,
    species_hint,
)
from .scales import cell_datasets, normalize_parts, recognize


@dataclass(frozen=True)
class Alignment:
    """What processing a query found (`apply_record`): the gene `overlap` (see `align_genes`), what
    its `values` were (`scquery.preprocessing.scales.detect_values`: one dict, or one per dataset),
    the query's and the reference's `species`, the `gene_map` record where genes were mapped (else
    None) and, per reference gene, whether the query has it (`shared`)."""

    overlap: dict
    values: dict
    species: dict
    gene_map: dict | None
    shared: np.ndarray

    def entries(self):
        """What a run records of it (`uns[key]`): overlap, values, species and the gene map."""
        found = {"overlap": self.overlap, "values": self.values, "species": self.species}
        return found if self.gene_map is None else {**found, "gene_map": self.gene_map}


def apply_record(cells, record, inputs, *, option="min_overlap"):
    """Process the query `cells` (`scquery.values.Cells`) like the reference of `record` (from
    `scquery.preprocessing.fit.fit_reference`).

    The query's scale is recognized (`detect_values`; each dataset of a merged query on its own)
    and undone (`to_linear`); its cells are then normalized to the reference's `target_sum` on the
    query's own genes and log1p-transformed, so counts and every normalized or logged form of them
    give the same matrix. Centred or scaled values are refused (`ScqueryError`). A query of another
    species is mapped onto the reference's genes (`scquery.orthologs.map_genes`) through
    `inputs.gene_map` (a CSV/TSV path, DataFrame, dict or `GeneMap`: `scquery.orthologs.read_gene_map`)
    or, with `inputs.species` (the query's: 'human' or 'mouse'), the built-in orthologues; given
    neither, a query whose gene names look like another species than the reference's is refused
    with a hint (`inputs`: `scquery.options.InputOptions`). Then the genes are aligned to
    `record['genes']` (`align_genes`, below `inputs.min_overlap` an error naming `option`, the
    caller's name for it). All cells are kept;
    scaling, when recorded, is the model's first layer.

    Returns:
        `(X, alignment)`: CSR float32 cells × `record['genes']`, and the `Alignment` report (the
        gene map's record holds `overlap_before`: the overlap of the query's own gene names).
    """
    parts = recognize(cells.X, cell_datasets(cells.obs))
    X, values = normalize_parts(cells.X, parts, record["target_sum"], cells.source)
    names, reference = cells.genes, reference_species(record)
    query_species = inputs.species or detect_species(names)
    found = _gene_map(inputs.gene_map, inputs.species, query_species, reference, cells.source)
    mapping = None
    if found is not None:
        X, names, mapping = _mapped(X, names, found, record["genes"], cells.source)
    X, shared, overlap = _align(X, names, record["genes"], cells.source, inputs.min_overlap, option)
    species = {"query": query_species, "reference": reference}
    return X, Alignment(overlap, values, species, mapping, shared)


def _mapped(X, names, found, genes, source):
    """`X` (genes `names`) mapped onto the reference `genes` through the `GeneMap` `found`: the
    mapped matrix, its genes and the map's record (with `overlap_before`)."""
    find = gene_lookup(names)
    before = sum(find(key) >= 0 for key in match_keys(genes))
    mapped, mapped_genes, mapping = map_genes(X, names, found, genes)
    if not mapped_genes:
        raise ScqueryError(
            f"None of the genes of {source} maps onto the model's genes through {found.name}; check "
            "that the map's query_gene column names the query's genes (the built-in table holds gene "
            "symbols and human Ensembl IDs, not mouse ones)."
        )
    mapping["overlap_before"] = {
        "n_reference_genes": len(genes),
        "n_shared": int(before),
        "fraction": float(before / len(genes)),
    }
    return mapped, mapped_genes, mapping


def align_genes(cells, genes, *, min_overlap):
    """The values of `cells` (`scquery.values.Cells`) on `genes`, in their order, the missing ones
    zero-filled (sparse).

    Genes match exactly first, then case-insensitively; Ensembl version suffixes are ignored on
    both sides (`cells.genes` are those of `var_names`, or of the `var` column `gene_key`). A data
    gene matching several reference genes fills each of them.

    Returns:
        `(X, shared, overlap)`: CSR float32 cells × `genes`; per gene, whether the data has it;
        `overlap = {'n_reference_genes', 'n_shared', 'fraction'}`. Warns below 80 % overlap and
        raises `ScqueryError` below `min_overlap` or when no gene is shared.
    """
    return _align(cells.X, cells.genes, genes, cells.source, min_overlap)


def _align(X, names, genes, source, min_overlap, option="min_overlap"):
    genes = [str(g) for g in genes]
    sources, overlap = gene_sources(names, genes, source, min_overlap, option)
    aligned = sp.csr_matrix(X @ selection_matrix(sources, X.shape[1]), dtype=np.float32)
    aligned.sort_indices()
    return aligned, sources >= 0, overlap


def gene_sources(names, genes, source, min_overlap, option="min_overlap"):
    """`(sources, overlap)`: for each of `genes`, the index of its match among the data's gene
    `names` (-1: none), and the overlap (see `align_genes`, which warns and raises as this does)."""
    find = gene_lookup(names)
    sources = np.asarray([find(key) for key in match_keys(genes)], dtype=np.int64)
    found = np.flatnonzero(sources >= 0)
    overlap = {
        "n_reference_genes": len(genes),
        "n_shared": int(found.size),
        "fraction": float(found.size / len(genes)) if genes else 0.0,
    }
    percent = f"{100 * overlap['fraction']:.1f} %"
    if found.size == 0:
        raise ScqueryError(
            f"{source} shares no genes with the reference; check that both use the same gene "
            "naming (symbols or Ensembl IDs, see gene_key) and species."
        )
    if overlap["fraction"] < min_overlap:
        raise TooFewGenes(
            f"{source} shares only {overlap['n_shared']} of {len(genes)} reference genes "
            f"({percent}, below {option}={min_overlap}); check the gene naming (gene_key) "
            f"and species, or lower {option}.",
            option,
        )
    if overlap["fraction"] < 0.8:
        warnings.warn(
            f"{source} shares {overlap['n_shared']} of {len(genes)} reference genes ({percent}); "
            "the missing genes are set to zero.",
            stacklevel=3,
        )
    return sources, overlap


def selection_matrix(sources, n_genes):
    """The sparse genes × chosen genes matrix that `X @` it picks the `sources` columns of `X` with
    (zeros where a source is -1)."""
    found = np.flatnonzero(sources >= 0)
    return sp.csr_matrix(
        (np.ones(found.size, dtype=np.float32), (sources[found], found)), shape=(n_genes, len(sources))
    )


def reference_species(record):
    """The species of a preprocessing record's reference: recorded at training, or (records of older
    bundles) detected from its genes; None when they do not tell."""
    return record.get("species") or detect_species(record["genes"])


def _gene_map(gene_map, species, query_species, reference, source):
    """The `GeneMap` to use (None: the genes are aligned as they are), or the one sentence saying
    why not: a query whose gene names look like another species (`query_species`, as given or
    detected) than the reference's, given neither option, is refused rather than matched by chance
    (case-insensitive names)."""
    if gene_map is not None and species is not None:
        raise ScqueryError("Give either species (the built-in orthologues) or gene_map (your own), not both.")
    if gene_map is not None:
        return read_gene_map(gene_map)
    if species is None:
        if query_species is not None and reference is not None and query_species != reference:
            raise ScqueryError(
                f"{source} does not match the model's genes: {species_hint(query_species, reference)}."
            )
        return None
    if species not in SPECIES:
        raise ScqueryError(f"species={species!r} is not known; choose one of {', '.join(SPECIES)}.")
    if reference is None:
        raise ScqueryError(
            "The model's reference species is not recorded and its gene names look neither human nor "
            "mouse; give a gene map (--gene-map FILE, gene_map=) instead of the species."
        )
    return None if species == reference else builtin_map(species, reference)
