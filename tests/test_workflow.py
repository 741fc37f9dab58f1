"""The Snakemake workflow: lint, format, dry runs (also with the SLURM profile, without conda),
configuration errors, and one whole run of the quick test configuration (.test)."""

import base64
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("snakemake")

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
CONFIG = REPO / "config" / "config.yaml"
QUERY = "pbmc68k_heldout"


def snakemake(workdir, *args, config=CONFIG, snakefile=SNAKEFILE, timeout=600):
    """Run the workflow from the repository in `workdir` with the configuration file `config` (None:
    the working directory's config/config.yaml); returns the process."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir)]
    command += ["--configfile", str(config)] if config else []
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def job_resources(dry_run_output, rule):
    """The resources a dry run prints for the first job of `rule`, as a dict."""
    block = dry_run_output.split(f"rule {rule}:", 1)[1].split("\n\n", 1)[0]
    line = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
    return dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))


def write_config(path, **changes):
    """The shipped configuration with top-level `changes`, written to `path`."""
    config = yaml.safe_load(CONFIG.read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("snakefile", [SNAKEFILE, REPO / "workflow" / "Snakefile"], ids=["top", "workflow"])
def test_lint_has_no_findings(tmp_path, snakefile):
    result = snakemake(tmp_path, "--lint", snakefile=snakefile)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_rules_are_snakefmt_clean():
    command = [Path(sys.executable).with_name("snakefmt"), "--check", "Snakefile", "workflow"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "would be left unchanged" in result.stderr


@pytest.mark.parametrize("snakefile", [SNAKEFILE, REPO / "workflow" / "Snakefile"], ids=["top", "workflow"])
def test_both_snakefiles_run_the_same_jobs_with_rule_all_as_default_target(tmp_path, snakefile):
    result = snakemake(tmp_path, "--dry-run", "--quiet", "rules", snakefile=snakefile)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    counts = dict(row for row in rows if len(row) == 2 and row[1].isdigit())
    assert counts.pop("total") == "9"
    assert counts == dict.fromkeys(
        ["all", "default_data", "pretrain", "finetune", "embed", "query"]
        + ["report_model", "report_query", "report_overview"],
        "1",
    )


def test_default_profile_sizes_the_jobs(tmp_path):
    result = snakemake(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Using workflow specific profile profiles/default" in result.stdout + result.stderr
    for rule, mem_mb, runtime in [("pretrain", 16000, 240), ("finetune", 16000, 240), ("embed", 4000, 30)]:
        resources = job_resources(result.stdout, rule)
        assert (resources["mem_mb"], resources["runtime"]) == (str(mem_mb), str(runtime)), rule


def test_slurm_profile_dry_run_needs_no_conda(tmp_path):
    # The profile submits with the SLURM executor; it must neither need conda nor sbatch to plan.
    path = ":".join(
        str(Path(tool).parent) for tool in (sys.executable, shutil.which("bash")) if tool
    )  # no conda on the PATH, whatever the machine has
    command = [
        sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm", "--dry-run",
        "--directory", str(tmp_path), "--configfile", str(CONFIG),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env={"PATH": path, "HOME": str(tmp_path)}
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Using workflow specific profile profiles/slurm" in output
    assert "conda" not in output.lower()
    assert "rule all:" in result.stdout
    default = snakemake(tmp_path, "--dry-run")
    for rule in ("pretrain", "embed"):  # the two profiles size the jobs alike
        slurm_resources, local_resources = (
            job_resources(result.stdout, rule),
            job_resources(default.stdout, rule),
        )
        for key in ("mem_mb", "runtime"):
            assert slurm_resources[key] == local_resources[key], (rule, key)
    assert not (tmp_path / "results").exists()


def test_dry_run_of_the_default_configuration(tmp_path):
    result = snakemake(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    for rule in ("default_data", "pretrain", "finetune", "embed", "query", "report_query"):
        assert f"rule {rule}:" in result.stdout
    assert "ingest_reference" not in result.stdout  # no user files: the built-in split instead
    assert not (tmp_path / "results").exists()


def test_each_query_is_its_own_job(tmp_path):
    for name in ("ref.h5ad", "a.h5ad", "b1.h5ad", "b2.h5ad"):
        (tmp_path / name).touch()  # a dry run only needs the files to exist
    config = write_config(
        tmp_path / "user.yaml",
        reference={"files": ["ref.h5ad"], "label_key": "cell_type", "layer": "counts"},
        queries={"a": "a.h5ad", "b": ["b1.h5ad", "b2.h5ad"]},
        query_label_key=None,
        train={"pretrain": False},
    )
    result = snakemake(tmp_path, "--dry-run", "--quiet", "rules", config=config)
    assert result.returncode == 0, result.stderr
    counts = dict(line.split()[:2] for line in result.stdout.splitlines() if len(line.split()) == 2)
    assert counts["ingest_reference"] == "1"
    assert counts["ingest_query"] == counts["embed"] == counts["query"] == "2"
    assert counts["report_query"] == "2"
    assert "pretrain" not in counts and "default_data" not in counts


def test_a_query_of_another_species_names_its_species_or_gene_map(tmp_path):
    for name in ("ref.h5ad", "mouse.h5ad", "rat.h5ad", "rat_to_human.csv"):
        (tmp_path / name).touch()
    queries = {
        "mouse": {"files": "mouse.h5ad", "species": "mouse"},
        "rat": {"files": ["rat.h5ad"], "gene_map": "rat_to_human.csv"},
    }
    config = write_config(
        tmp_path / "user.yaml",
        reference={"files": ["ref.h5ad"], "label_key": "cell_type"},
        queries=queries,
        query_label_key=None,
        train={"pretrain": False},
    )
    result = snakemake(tmp_path, "--dry-run", config=config)
    assert result.returncode == 0, result.stderr
    query_jobs = [block for block in result.stdout.split("rule query:")[1:]]
    assert len(query_jobs) == 2 and any("rat_to_human.csv" in block.split("\n\n")[0] for block in query_jobs)
    both = {**queries, "mouse": {**queries["mouse"], "gene_map": "rat_to_human.csv"}}
    result = snakemake(tmp_path, "--dry-run", config=write_config(tmp_path / "both.yaml", queries=both))
    assert result.returncode != 0 and "The configuration is invalid at" in result.stdout + result.stderr
    (tmp_path / "rat_to_human.csv").unlink()
    result = snakemake(tmp_path, "--dry-run", config=config)
    assert (
        result.returncode != 0 and "configuration key queries.rat.gene_map" in result.stdout + result.stderr
    )


def test_unlabeled_files_are_ingested_for_pretraining_only(tmp_path):
    for name in ("ref.h5ad", "a.h5ad", "run1.h5ad", "run2"):
        (tmp_path / name).touch()
    changes = {
        "reference": {"files": ["ref.h5ad"], "label_key": "cell_type"},
        "queries": {"a": "a.h5ad"},
        "unlabeled": ["run1.h5ad", "run2"],
        "query_label_key": None,
    }
    config = write_config(tmp_path / "user.yaml", **changes)
    result = snakemake(tmp_path, "--dry-run", config=config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("rule ingest_unlabeled:") == 2 and result.stdout.count("rule pretrain:") == 1
    pretrain = result.stdout[result.stdout.index("rule pretrain:") :].split("output:")[0]
    assert "results/data/unlabeled/unlabeled_1.h5ad" in pretrain and "unlabeled_2.h5ad" in pretrain
    finetune = result.stdout[result.stdout.index("rule finetune:") :].split("output:")[0]
    assert "unlabeled" not in finetune
    no_pretraining = write_config(tmp_path / "bad.yaml", **changes, train={"pretrain": False})
    result = snakemake(tmp_path, "--cores", 1, config=no_pretraining)
    assert result.returncode != 0
    assert "lists unlabeled files, which serve pretraining only, but train.pretrain is false" in result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train": {"hidden_sizes": [8], "epoch": 3}}, "'epoch' was unexpected"),
        ({"query": {"k": 5, "nearest": 3}}, "'nearest' was unexpected"),
        ({"refrence": {}}, "'refrence' was unexpected"),
        ({"train": {"noise": "salt"}}, "is not one of"),
        ({"resources": {"train": {"mem_mb": 8000}}}, "'resources' was unexpected"),  # profiles hold them
    ],
)
def test_invalid_configuration_fails_before_any_job(tmp_path, changes, message):
    config = write_config(tmp_path / "bad.yaml", **changes)
    result = snakemake(tmp_path, "--cores", 1, config=config)
    assert result.returncode != 0
    assert "The configuration is invalid at" in result.stderr
    assert message in result.stderr
    assert 'File "' not in result.stderr and "Traceback" not in result.stderr  # one sentence
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_missing_input_file_fails_before_any_job(tmp_path):
    config = write_config(
        tmp_path / "missing.yaml",
        reference={"files": ["data/atlas.h5ad"], "label_key": "cell_type"},
    )
    result = snakemake(tmp_path, "--cores", 1, config=config)
    assert result.returncode != 0
    assert "Input file data/atlas.h5ad (configuration key reference.files) does not exist" in (result.stderr)
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_quick_test_configuration_is_complete_and_small():
    quick = yaml.safe_load((REPO / ".test" / "config" / "config.yaml").read_text())
    shipped = yaml.safe_load(CONFIG.read_text())
    assert set(quick) == set(shipped)  # complete: `--directory .test` reads only this file
    assert {key: value for key, value in quick.items() if key != "train"} == {
        key: value for key, value in shipped.items() if key != "train"
    }
    assert quick["train"]["hidden_sizes"] == [32, 8] and quick["train"]["epochs"] <= 5


@pytest.mark.slow
def test_whole_workflow_on_the_quick_test_configuration(tmp_path):
    import anndata as ad
    import numpy as np

    from scquery.bundle import load_bundle, trained
    from scquery.datasets import pbmc68k_split
    from scquery.embed import embedded as embedded_line
    from scquery.embed import genes_found
    from scquery.evaluate import score

    # As the Snakemake workflow catalog runs it (snakemake --cores 2 --directory .test), with the
    # held-out cells, unlabelled, pretraining too (a query's own cells, as the README suggests).
    shutil.copytree(REPO / ".test" / "config", tmp_path / "config")
    pbmc68k_split(seed=0)[1].write_h5ad(tmp_path / "heldout_cells.h5ad")
    quick = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    (tmp_path / "config" / "config.yaml").write_text(
        yaml.safe_dump({**quick, "unlabeled": ["heldout_cells.h5ad"]})
    )
    config = None  # the working directory's config/config.yaml
    result = snakemake(tmp_path, "--cores", 2, config=config)
    assert result.returncode == 0, result.stderr[-5000:]

    results = tmp_path / "results"
    bundle = load_bundle(results / "model")
    assert bundle.reference.obsm["X_scquery"].shape == (bundle.reference.n_obs, 8)
    # 300 highly variable genes, and each type's 20 defining genes (the pretrain and finetune jobs chose
    # the same: the finetune job refuses an encoder of other genes)
    markers = {gene for genes in bundle.preprocess["marker_genes"].values() for gene in genes}
    assert len(bundle.genes) == len(set(bundle.genes)) > 300 and markers <= set(bundle.genes)
    assert set(bundle.classes) <= set(bundle.preprocess["marker_genes"])
    assert [stage["stage"] for stage in bundle.history["pretrain"]] == ["layer_0", "layer_1"]
    # Quality control (min_genes 200) keeps 486 of the 490 reference cells and 207 of the 210 held-out
    # ones; all of them pretrain, the labelled reference cells are the query's reference points.
    assert bundle.history["pretrain"][0]["cells"] == 486 + 207 and bundle.reference.n_obs == 486

    query = ad.read_h5ad(results / "query" / f"{QUERY}.h5ad")
    assert query.n_obs == 210  # 30 % of pbmc68k_reduced's 700 cells held out
    assert query.obsm["X_scquery"].shape == (210, 8)
    for column in ("scquery_prediction", "scquery_confidence", "scquery_classifier"):
        assert column in query.obs
    assert set(query.obs["scquery_prediction"]) <= {*bundle.classes, "Unknown"}
    # Predictions, not plumbing only: the held-out cells keep their labels (bulk_labels) beside them.
    # Measured (seed 0; 300 highly variable genes and the types' defining genes): 19 of 210 accepted (a
    # 4-epoch classifier is rarely confident), all of them right; the neighbours' vote alone 0.59 right;
    # the largest type 0.34 of the cells.
    truth = query.obs["bulk_labels"].astype(str)
    predicted = query.obs["scquery_prediction"].astype(str)
    accepted = predicted != "Unknown"
    majority = truth.value_counts(normalize=True).iloc[0]  # a constant answer's accuracy
    knn = (query.obs["scquery_knn"].astype(str) == truth).mean()
    quality = f"{accepted.sum()} accepted, {(predicted == truth)[accepted].mean():.3f} right, vote {knn:.3f}"
    assert accepted.sum() >= 10, quality
    assert (predicted == truth)[accepted].mean() > majority + 0.3, quality
    assert knn > majority + 0.15, quality
    assert query.uns["scquery"]["model_id"] == bundle.model_id
    assert not set(query.obs_names) & set(bundle.reference.obs_names)  # a real hold-out
    embedded = ad.read_h5ad(results / "embedding" / f"{QUERY}.h5ad")
    np.testing.assert_allclose(embedded.obsm["X_scquery"], query.obsm["X_scquery"], atol=1e-5)
    assert "scquery_prediction" not in embedded.obs

    summary = pd.read_csv(results / "report" / f"{QUERY}_summary.tsv", sep="\t")
    assert summary["n_cells"].sum() == 210
    matches = pd.read_csv(results / "query" / f"{QUERY}_matches.tsv.gz", sep="\t")
    assert len(matches) == 210 * 15
    for figure in ("training_curves", "reference_umap", f"{QUERY}_umap", f"{QUERY}_confusion"):
        assert (results / "report" / f"{figure}.png").stat().st_size > 10_000
    for log in ("default_data", "pretrain", "finetune", f"embed/{QUERY}", f"query/{QUERY}"):
        text = (tmp_path / "logs" / f"{log}.log").read_text()
        assert "faiss.loader" not in text and "as categorical" not in text, text
        assert (tmp_path / "logs" / "benchmarks" / f"{log}.tsv").is_file()
    # The jobs' logs read like the command line's: stage lines, then what was written.
    logged = {log: (tmp_path / "logs" / log / f"{QUERY}.log").read_text() for log in ("embed", "query")}
    assert all(" scquery: " in line for text in logged.values() for line in text.splitlines()), logged
    assert (
        f"scquery: embedding 210 cells: {genes_found(embedded.uns['scquery']['overlap'])}" in logged["embed"]
    )
    assert (
        logged["embed"].rstrip().endswith(f"Wrote results/embedding/{QUERY}.h5ad: {embedded_line(embedded)}.")
    )
    assert "scquery: finding each cell's 15 nearest of 486 reference cells" in logged["query"]
    finetune = (tmp_path / "logs" / "finetune.log").read_text().rstrip()
    assert finetune.endswith(f"Wrote results/model: model {bundle.model_id}, {trained(bundle)}.")
    assert (
        logged["query"].rstrip().endswith(f"Wrote results/query/{QUERY}.h5ad: {score(query, 'bulk_labels')}.")
    )

    headline = (results / "report" / "scores.txt").read_text()  # what `make run` ends with
    assert headline == f"scquery: {QUERY}: {score(query, 'bulk_labels')}\n"
    assert "210 cells · accuracy " in headline

    # Complete: nothing is left to do (the index cached in the bundle does not trigger reruns).
    again = snakemake(tmp_path, "--dry-run", config=config)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    report = snakemake(tmp_path, "--report", "report.html", config=config)
    assert report.returncode == 0, report.stderr[-5000:]
    html = (tmp_path / "report.html").read_text()
    assert QUERY in html and "Confusion matrix" in html
    check_report(html, bundle, query)


def report_variable(html, name):
    """The JSON value (an object or a string, on one line) of the report page's `var NAME = …`."""
    start = re.search(rf"var {name} = (?=[{{\"])", html).end()
    return json.loads(html[start : html.index("\n", start)].rstrip().rstrip(";"))


class _TableRows(HTMLParser):
    """The rows of the first HTML table, as lists of cell texts (header row first)."""

    def __init__(self, text):
        super().__init__()
        self.rows, self._cell, self._done = [], None, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if self._done:
            return
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and not self._done:
            self.rows[-1].append(self._cell.strip())
            self._cell = None
        self._done = self._done or tag == "table"

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def html_table(text):
    rows = _TableRows(text).rows
    return pd.DataFrame(rows[1:], columns=rows[0])


def check_report(html, bundle, query):
    """The first page holds the headline table; every figure and table is in the report."""
    from scquery.evaluate import score

    first_page = report_variable(html, "workflow_desc")
    assert 'class="scquery"' in first_page
    headline = html_table(first_page)
    assert list(headline.columns) == ["query", "cells", "predicted types", "accuracy", "macro-F1", "Unknown"]
    expected = score(query, "bulk_labels")
    row = headline.iloc[0]
    shown = (row["query"], row["cells"], row["predicted types"])
    assert shown == (QUERY, "210", str(expected["predicted_types"]))
    assert row["accuracy"] == f"{expected['accuracy']:.1%}" and row["Unknown"] == f"{expected['unknown']:.1%}"
    assert row["macro-F1"] == f"{expected['macro_f1']:.3f}"
    assert f"Model {bundle.model_id}: {bundle.reference.n_obs:,} reference cells" in first_page
    assert f"validation accuracy {bundle.validation_accuracy:.1%} (of the model kept)" in first_page

    results = report_variable(html, "results")
    shown = {
        "training_curves.png", "reference_umap.png", "overview.html", f"{QUERY}_umap.png",
        f"{QUERY}_confusion.png", f"{QUERY}_per_type.html", f"{QUERY}_summary.html", f"{QUERY}_summary.png",
    }  # fmt: skip
    assert {Path(path).name for path in results} == shown
    for path, entry in results.items():
        kind = "image/png" if path.endswith(".png") else "text/html"
        assert entry["data_uri"].startswith(f"data:{kind}") and len(entry["data_uri"]) > 1000, path
        assert entry["caption"], path
    per_type = results[f"results/report/{QUERY}_per_type.html"]["data_uri"]
    table = html_table(base64.b64decode(per_type.split(",", 1)[1]).decode())
    assert list(table.columns) == ["cell type", "cells", "predicted", "precision", "recall", "f1", "unknown"]
    assert table["cells"].astype(int).sum() == 210
