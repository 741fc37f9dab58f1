"""The report's headline table: the model, then each query's cells, types, scores and share Unknown."""

from common import html_table, log_to

log_to(snakemake.log[0])

import json  # noqa: E402

import pandas as pd  # noqa: E402

import scquery as scq  # noqa: E402

bundle = scq.load(snakemake.input.bundle)
rows = []
for path in snakemake.input.scores:
    with open(path) as handle:
        rows.append(json.load(handle))
table = pd.DataFrame(rows).reindex(
    columns=["query", "cells", "predicted_types", "accuracy", "macro_f1", "unknown"]
)
table.columns = ["query", "cells", "types", "accuracy", "macro-F1", "Unknown"]
accuracy = max(bundle.history["classifier"].get("val_accuracy", [float("nan")]))
caption = (
    f"Model {bundle.model_id}: {bundle.reference.n_obs:,} reference cells, {len(bundle.classes)} cell "
    f"types, {len(bundle.genes):,} genes, validation accuracy {accuracy:.1%}"
)
html_table(
    table,
    snakemake.output[0],
    caption=caption,
    formats={"Unknown": "{:.1%}", "accuracy": "{:.1%}", "macro-F1": "{:.3f}"},
)
