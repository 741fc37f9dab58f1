"""What a newcomer meets on the command line: a light `import scquery`, answers before any Keras
import, -q/-v before the command, the command line's own wording, and scores on the terminal."""

import json
import subprocess
import sys

import anndata as ad
import pytest

from scquery.bundle import save_bundle
from scquery.cli import main

HEAVY = ("keras", "tensorflow", "jax", "torch", "scanpy", "faiss")


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
assert not [m for m in {HEAVY!r} if m in sys.modules], [m for m in {HEAVY!r} if m in sys.modules]
print("status", status)
"""
    result = run_python(script)
    assert result.stdout.splitlines()[-1] == f"status {0 if argv[-1].startswith('--') else 2}"


def test_missing_input_is_refused_before_keras(tmp_path):
    script = f"""
import sys
from scquery.cli import main
status = main(["query", "no_model", "no_query.h5ad", "--out", {str(tmp_path / "out.h5ad")!r}])
assert status == 2 and "keras" not in sys.modules
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
