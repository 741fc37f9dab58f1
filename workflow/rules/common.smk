"""Configuration checks and helpers shared by the rules."""

import re
import sys
from pathlib import Path

import jsonschema
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def _refuse(message):
    """Stop the workflow with one sentence about the configuration, and no traceback lines (as
    `scquery` stops on a user's mistake): exit status 1, before any job starts."""
    sys.exit(f"scquery: error: {message}")


def _validate_config():
    """Check the configuration against its schema; a problem fails in one sentence, naming the key."""
    try:
        validate(config, "../schemas/config.schema.yaml")
    except WorkflowError as error:
        problem = error.__cause__ or error.__context__
        if not isinstance(problem, jsonschema.ValidationError):
            raise
        where = ".".join(map(str, problem.absolute_path)) or "its top level"
        _refuse(
            f"The configuration is invalid at {where}: {problem.message}; "
            "config/README.md describes the valid keys and values."
        )


_validate_config()

#: The report's UMAPs show at most this many reference cells (and query cells), drawn at random.
REPORT_MAX_CELLS = 20_000
#: Name of the held-out query of the built-in data (used when `queries` is empty).
DEFAULT_QUERY = "pbmc68k_heldout"
#: The built-in reference/query split is used when no reference files or no queries are given.
USE_DEFAULT_REFERENCE = not config["reference"]["files"]


def _files(entry):
    """A query's files: the entry itself (a path or a list), or its `files` key."""
    files = entry["files"] if isinstance(entry, dict) else entry
    return [files] if isinstance(files, str) else list(files)


QUERIES = {name: _files(entry) for name, entry in config["queries"].items()} or {
    DEFAULT_QUERY: []
}
#: Per query of another species: how its genes map onto the reference's (`species`, `gene_map`).
QUERY_GENES = {
    name: {key: entry[key] for key in ("species", "gene_map") if key in entry}
    for name, entry in config["queries"].items()
    if isinstance(entry, dict)
}


#: The unlabelled datasets for pretraining, one per file or folder: unlabeled_1, unlabeled_2, …
UNLABELED = {
    f"unlabeled_{i}": path
    for i, path in enumerate(config.get("unlabeled", []), start=1)
}
if UNLABELED and not config["train"].get("pretrain", True):
    _refuse(
        "The configuration lists unlabeled files, which serve pretraining only, but train.pretrain "
        "is false; set it to true or empty the unlabeled list."
    )


def _check_files_exist():
    """Fail before any job starts when a configured input file is missing."""
    configured = [("reference.files", path) for path in config["reference"]["files"]]
    configured += [("unlabeled", path) for path in UNLABELED.values()]
    configured += [
        (f"queries.{name}", path) for name, paths in QUERIES.items() for path in paths
    ]
    configured += [
        (f"queries.{name}.gene_map", genes["gene_map"])
        for name, genes in QUERY_GENES.items()
        if "gene_map" in genes
    ]
    for key, path in configured:
        if not Path(path).exists():
            _refuse(
                f"Input file {path} (configuration key {key}) does not exist in {Path.cwd()}; "
                "fix the path in the configuration (relative paths start at the working directory)."
            )


_check_files_exist()


def all_outputs():
    """Every final output: the model bundle, the embedded and annotated queries, the report's figures."""
    outputs = [
        "results/model",
        "results/report/training_curves.png",
        "results/report/reference_umap.png",
        "results/report/overview.html",
    ]
    outputs += expand("results/embedding/{query}.h5ad", query=QUERIES)
    outputs += expand("results/query/{query}.h5ad", query=QUERIES)
    outputs += expand("results/report/{query}_umap.png", query=QUERIES)
    outputs += expand(
        "results/report/{query}_summary.{ext}",
        query=QUERIES,
        ext=["tsv", "html", "png"],
    )
    if config["query_label_key"]:
        outputs += expand(
            "results/report/{query}_{part}",
            query=QUERIES,
            part=["confusion.png", "per_type.html"],
        )
    return outputs


wildcard_constraints:
    query="|".join(re.escape(name) for name in QUERIES),
    unlabeled="|".join(re.escape(name) for name in UNLABELED) or "$^",


#: The reference as the training rule reads it.
REFERENCE = (
    "results/data/default/reference.h5ad"
    if USE_DEFAULT_REFERENCE
    else "results/data/reference.h5ad"
)


def _values(section):
    """Where a section's values are (`layer`, `use_raw`), for the package's functions: they read
    them from there and leave the data's `.X` as it is."""
    options = config.get(section, {})
    return {"layer": options.get("layer"), "use_raw": options.get("use_raw", False)}


#: Where the reference's and the queries' values are (none for the built-in data).
REFERENCE_VALUES = {} if USE_DEFAULT_REFERENCE else _values("reference")
QUERY_VALUES = _values("query_input")


def query_data(wildcards):
    """The ingested query `wildcards.query`: the built-in held-out query or the user's files."""
    if not QUERIES[wildcards.query]:
        return "results/data/default/query.h5ad"
    return f"results/data/queries/{wildcards.query}.h5ad"


def query_genes(wildcards):
    """How the query `wildcards.query` maps its genes onto the reference's (none: as they are)."""
    return QUERY_GENES.get(wildcards.query, {})


def gene_map_input(wildcards):
    """The gene map file of the query `wildcards.query`, if it has one."""
    return query_genes(wildcards).get("gene_map", [])


def finetune_input(wildcards):
    """The reference, and the pretrained encoder unless `train.pretrain` is false."""
    inputs = {"reference": REFERENCE}
    if config["train"].get("pretrain", True):
        inputs.update(rules.pretrain.output)
    return inputs


def query_report(path, caption, figure):
    """`path` as a figure of one query in the report, captioned by workflow/report/`caption`."""
    return report(
        path,
        caption=f"../report/{caption}",
        category="Queries",
        subcategory="{query}",
        labels={"query": "{query}", "figure": figure},
    )
