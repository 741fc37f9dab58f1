"""What a newcomer meets on the command line: a light `import scquery`, answers before any Keras
import, -q/-v before the command, the command line's own wording, and scores on the terminal."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest

from scquery.bundle import save_bundle
from scquery.cli import main

HEAVY = ("keras", "tensorflow", "jax", "torch", "scanpy", "faiss")
#: What the command line's start and its checks do without, so that a mistake is answered at once.
STARTUP_FREE = ("pandas", "scipy", "sklearn", "anndata", "jsonschema", "yaml")


def run_python(script):
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_import_scquery_is_light_and_the_api_loads_on_first_use():
    script = f"""
import sys
import scquery as scq
assert not [m for m in {HEAVY!r} if m in sys.modules], sorted(sys.modules)
from scquery.query import UNKNOWN  # a module named like an API function is imported first ...
assert callable(scq.query) and callable(scq.train) and callable(scq.embed)  # ... the functions stay
assert scq.query.__module__ == "scquery.query" and scq.pl.palette
assert "keras" in sys.modules
"""
    run_python(script)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["query", "--help"], ["query"], ["score", "no.h5ad", "--truth-key", "x"]],
)
def test_cli_answers_before_importing_keras(argv):
    script = f"""
import sys
from scquery.cli import main
try:
    status = main({argv!r})
except SystemExit as stop:  # argparse: --help, --version, argument errors
    status = stop.code
loaded = [m for m in {HEAVY + STARTUP_FREE!r} if m in sys.modules]
assert not loaded, loaded
print("status", status)
"""
    result = run_python(script)
    assert result.stdout.splitlines()[-1] == f"status {0 if argv[-1].startswith('--') else 2}"


def test_missing_input_is_refused_before_keras(tmp_path):
    script = f"""
import sys
from scquery.cli import main
status = main(["query", "no_model", "no_query.h5ad", "--out", {str(tmp_path / "out.h5ad")!r}])
assert status == 2 and not [m for m in {HEAVY + STARTUP_FREE!r} if m in sys.modules]
"""
    result = run_python(script)
    assert result.stderr == "scquery: error: The input no_model does not exist; check the path.\n"


def test_quiet_and_verbose_are_taken_before_the_command():
    from scquery.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["-q", "score", "a.h5ad", "--truth-key", "x"]).quiet is True
    assert parser.parse_args(["-vv", "score", "a.h5ad", "--truth-key", "x"]).verbose == 2
    assert parser.parse_args(["score", "a.h5ad", "--truth-key", "x", "-v"]).verbose == 1
    given = parser.parse_args(["score", "a.h5ad", "--truth-key", "x"])
    assert (given.quiet, given.verbose) == (False, 0)


@pytest.fixture(scope="module")
def queried(bundle, split, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_scores")
    save_bundle(bundle, folder / "model")
    split[1].write_h5ad(folder / "query.h5ad")
    return folder


def test_query_with_truth_prints_and_keeps_its_scores(queried, capsys):
    out = queried / "annotated.h5ad"
    args = ["query", queried / "model", queried / "query.h5ad", "--out", out, "--truth-key", "bulk_labels"]
    assert main([str(a) for a in args]) == 0
    line = [line for line in capsys.readouterr().err.splitlines() if line.startswith("scquery: Wrote")]
    assert len(line) == 1
    assert " cells · accuracy " in line[0] and "% · macro-F1 0." in line[0] and " · Unknown " in line[0]
    scores = ad.read_h5ad(out).uns["scquery"]["scores"]
    assert set(scores) >= {"accuracy", "macro_f1", "unknown", "cells"} and scores["cells"] == 210

    json_path = queried / "scores.json"
    args = ["score", out, "--truth-key", "bulk_labels", "--json", json_path]
    assert main([str(a) for a in args]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: 210 cells · accuracy ") and printed.count("\n") == 1
    written = json.loads(json_path.read_text())
    assert written["accuracy"] == pytest.approx(float(scores["accuracy"]))
    assert f"accuracy {written['accuracy']:.1%}" in printed


def test_overwrite_is_named_as_the_command_line_names_it(queried, capsys):
    args = ["train", queried / "query.h5ad", "--label-key", "bulk_labels", "--out", queried / "model"]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert "give --overwrite to replace it" in err and "overwrite=True" not in err


def test_a_missing_label_column_lists_only_the_users_columns(split, tmp_path, capsys):
    reference = split[0][:60].copy()
    reference.obs = reference.obs[["bulk_labels", "louvain"]]
    reference.write_h5ad(tmp_path / "reference.h5ad")
    args = ["train", tmp_path / "reference.h5ad", "--label-key", "cell_type", "--out", tmp_path / "model"]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert "(columns: bulk_labels, louvain)" in err and "dataset" not in err, err


# Every check that needs only the arguments and the files' headers answers before Keras loads.


@pytest.fixture(scope="module")
def mistakes(queried, split):
    """The files of `queried` and a query annotated once already (scquery_* columns among its obs)."""
    annotated = split[1].copy()
    annotated.obs["scquery_prediction"] = annotated.obs["bulk_labels"]
    annotated.obs["scquery_confidence"] = 1.0
    annotated.write_h5ad(queried / "annotated_once.h5ad")
    (queried / "labels.tsv").write_text("known\tmodel\nB\tCD19+ B\nMono\tCD14 Monocytes\n")
    return queried


def refusals_before_keras(cases):
    """Run each command line of `cases` in one fresh process; return its status and stderr per case,
    failing if Keras (or another heavy library) was imported."""
    script = f"""
import contextlib, io, json, sys
from scquery.cli import main
answers = []
for argv in {[[str(a) for a in argv] for argv, _ in cases]!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    answers.append([status, err.getvalue()])
assert not [m for m in {HEAVY!r} if m in sys.modules], [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps(answers))
"""
    return json.loads(run_python(script).stdout.splitlines()[-1])


def test_mistakes_are_refused_in_one_sentence_before_keras(mistakes):
    model, data, out = mistakes / "model", mistakes / "query.h5ad", mistakes / "out.h5ad"
    annotated, config = mistakes / "annotated_once.h5ad", mistakes / "bad.yaml"
    config.write_text("epochs: 0\n")
    query = ["query", model, data, "--out", out]
    cases = [
        (
            ["query", data, model, "--out", out],
            f"{data} is a data file, not a model bundle; did you swap them?",
        ),
        (["query", model / "model.keras", data, "--out", out], "is a file inside the model bundle"),
        (["query", model / "reference.h5ad", data, "--out", out], "is a file inside the model bundle"),
        (["query", model, model, "--out", out], f"{model} is a model bundle, not data; did you swap them?"),
        ([*query, "--min-confidence", "2"], "--min-confidence must be a finite number in [0, 1], got 2.0."),
        ([*query, "--layer", "counts", "--use-raw"], "Choose either the layer 'counts' or .raw"),
        ([*query, "--use-raw"], "has no .raw"),
        ([*query, "--layer", "counts"], "has no layer 'counts' (layers: none)"),
        ([*query, "--k", "100000"], "--k 100000 is more than the 490 cells of the model's reference"),
        ([*query, "--groupby", "louvain"], "--groupby shapes the --summary table only"),
        ([*query, "--truth-key", "bulk_label"], "did you mean 'bulk_labels'?"),
        ([*query, "--label-map", mistakes / "labels.tsv"], "give --truth-key COL too"),
        (
            [*query, "--truth-key", "bulk_labels", "--label-map", mistakes / "labels.tsv"],
            "renames known types to 'CD14 Monocytes', which the model does not predict",
        ),
        (["query", model, data, "--out", mistakes / "x.csv"], "scquery writes --out as .h5ad only"),
        ([*query, "--summary", mistakes / "s.txt"], "as .tsv, .tsv.gz, .csv or .csv.gz only"),
        (["query", model, data, "--out", mistakes / "new" / "x.h5ad"], "does not exist, so --out"),
        (["embed", model, data, "--out", mistakes / "e.loom"], "scquery writes --out as .h5ad only"),
        (
            ["train", data, "--label-key", "bulk_label", "--out", mistakes / "m"],
            "did you mean 'bulk_labels'?",
        ),
        (
            ["train", data, "--label-key", "bulk_labels", "--out", mistakes / "m.h5ad"],
            "a model bundle is a folder",
        ),
        (
            ["train", model, "--label-key", "bulk_labels", "--out", mistakes / "m"],
            "is a model bundle, not data",
        ),
        (
            [
                "train",
                data,
                "--label-key",
                "bulk_labels",
                "--out",
                mistakes / "m",
                "--hidden-sizes",
                "64",
                "0",
            ],
            "--hidden-sizes must be a whole number of at least 1, got 0.",
        ),
        (
            ["train", data, "--label-key", "bulk_labels", "--out", mistakes / "m", "--config", config],
            "Training option epochs: 0 is less than the minimum of 1.",
        ),
        (
            ["extend", model, data, "--label-key", "cell_type", "--out", mistakes / "m"],
            "'cell_type' is not in",
        ),
        (["score", annotated, "--truth-key", "cell_type"], "(columns: bulk_labels, n_genes"),
        (["score", data, "--truth-key", "bulk_labels"], "has no obs column 'scquery_prediction'"),
        (["score", annotated, "--truth-key", "bulk_labels", "--json", mistakes / "s.csv"], "as .json only"),
    ]
    for (argv, expected), (status, err) in zip(cases, refusals_before_keras(cases), strict=True):
        assert status == 2 and err.startswith("scquery: error: ") and err.count("\n") == 1, (argv, err)
        assert expected in err, (argv, err)
        if "(columns:" in err:  # the user's columns only, not those a query wrote
            assert "scquery_" not in err.split("(columns:")[1], err
    assert not out.exists() and not (mistakes / "new").exists() and not (mistakes / "m").exists()


def test_a_quiet_query_of_scanpys_own_file_prints_nothing(queried, tmp_path):
    import scanpy as sc

    own = Path(sc.datasets.__file__).parent / "10x_pbmc68k_reduced.h5ad"  # an older h5ad layout
    command = [sys.executable, "-m", "scquery.cli", "-q", "query", queried / "model", own, "--use-raw"]
    result = subprocess.run(
        [*map(str, command), "--out", str(tmp_path / "out.h5ad")], capture_output=True, text=True, timeout=600
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert ad.read_h5ad(tmp_path / "out.h5ad").n_obs == 700


def test_query_names_its_stages_and_writes_tables_as_named(queried, capsys):
    out, matches, summary = queried / "staged.h5ad", queried / "matches.csv.gz", queried / "summary.tsv"
    args = ["query", queried / "model", queried / "query.h5ad", "--out", out, "--matches", matches]
    assert main([str(a) for a in [*args, "--summary", summary, "--groupby", "louvain"]]) == 0
    lines = capsys.readouterr().err.splitlines()
    stages = [
        f"loading the model {queried / 'model'} (490 reference cells, 10 cell types)",
        "reading",
        "embedding 210 cells: 765 of the model's 765 genes found (100%)",
        "finding each cell's 15",
    ]
    stages += ["judging the query's", f"writing {out}, {matches}, {summary}", f"Wrote {out}: 210 cells"]
    found = [
        next(i for i, line in enumerate(lines) if line.startswith(f"scquery: {stage}")) for stage in stages
    ]
    assert found == sorted(found), lines
    # the query's own clusters are found beside the neighbour search, and the line says so
    assert "clustering the query on its own expression alongside" in lines[found[3]]
    with gzip.open(matches, "rt") as handle:  # gzipped and comma-separated, as the name says
        assert handle.readline().startswith("query_cell,rank,reference_cell,distance,")
    assert summary.read_text().startswith("dataset\tlouvain\tn_cells\t")


def test_the_query_bar_names_the_stage_it_is_in(capsys):
    from scquery.logs import stage, stages

    with stages("query", ["reading", "embedding", "writing"], verbose=1):
        stage("embedding", "embedding %d cells", 3)
    assert "query" in capsys.readouterr().err  # the bar, on stderr
    with stages("query", ["reading"], verbose=0):
        stage("reading", "reading")
    assert capsys.readouterr().err == ""  # no bar, and the package prints no log line itself


def test_score_says_when_names_differ_and_when_a_label_map_renamed_them(mistakes, capsys):
    queried = mistakes
    annotated = ad.read_h5ad(mistakes / "annotated_once.h5ad")
    annotated.obs["renamed"] = annotated.obs["bulk_labels"].astype(str).str.replace("CD19+ B", "B")
    annotated.obs["renamed"] = annotated.obs["renamed"].str.replace("CD14+ Monocyte", "Mono")
    annotated.obs["renamed"] = annotated.obs["renamed"].str.replace("Dendritic", "DC")
    annotated.write_h5ad(queried / "renamed.h5ad")
    (queried / "names.csv").write_text("known,model\nB,CD19+ B\nMono,CD14+ Monocyte\nDC,Dendritic\n")
    assert main(["score", str(queried / "renamed.h5ad"), "--truth-key", "renamed"]) == 0
    captured = capsys.readouterr()
    assert "scquery: warning: The known types in obs['renamed'] share 7 of their 10 names" in captured.err
    assert "the known B, DC, Mono are none of the model's types (" in captured.err
    assert all(name in captured.err.split("model's types (")[1] for name in ("CD14+ Monocyte", "Dendritic"))
    args = ["score", str(queried / "renamed.h5ad"), "--truth-key", "renamed", "--label-map"]
    assert main([*args, str(queried / "names.csv")]) == 0
    mapped = capsys.readouterr()
    assert mapped.err == "" and mapped.out.rstrip().endswith("known types renamed by names.csv (3 names)")
    assert main(["score", str(queried / "renamed.h5ad"), "--truth-key", "bulk_labels"]) == 0
    original = capsys.readouterr().out
    assert original.strip().split(": ", 1)[1] in mapped.out  # the scores of the original names
    assert "accuracy 33.3%" in captured.out  # without the map, the renamed types count as wrong
