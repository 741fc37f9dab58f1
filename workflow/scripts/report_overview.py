"""The report's headline table: the model, then each query's cells, types, scores and share Unknown;
and the same as one line per query (`make run` prints them at its end)."""

from common import html_table, log_to

log_to(snakemake.log[0])

import json  # noqa: E402

import pandas as pd  # noqa: E402

import scquery as scq  # noqa: E402
from scquery.evaluate import Scores  # noqa: E402
from scquery.logs import logger  # noqa: E402

bundle = scq.load(snakemake.input.bundle)
rows = []
for path in snakemake.input.scores:
    with open(path) as handle:
        rows.append(json.load(handle))
table = pd.DataFrame(rows).reindex(
    columns=["query", "cells", "predicted_types", "accuracy", "macro_f1", "unknown"]
)
table.columns = ["query", "cells", "predicted types", "accuracy", "macro-F1", "Unknown"]
accuracy = bundle.validation_accuracy
caption = (
    f"Model {bundle.model_id}: {bundle.reference.n_obs:,} reference cells, {len(bundle.classes)} cell "
    f"types, {len(bundle.genes):,} genes"
    + ("" if accuracy is None else f", validation accuracy {accuracy:.1%} (of the model kept)")
)
html_table(
    table,
    snakemake.output.table,
    caption=caption,
    formats={"Unknown": "{:.1%}", "accuracy": "{:.1%}", "macro-F1": "{:.3f}"},
)
lines = [f"{row['query']}: {Scores({k: v for k, v in row.items() if k != 'query'})}" for row in rows]
for line in lines:
    logger.info(line)
with open(snakemake.output.headline, "w") as handle:
    handle.write("".join(f"scquery: {line}\n" for line in lines))
