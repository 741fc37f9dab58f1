"""The benchmark harness: its generator and metrics, and a quick end-to-end run."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` lives at the repository root, outside the package

from benchmarks.metrics import label_scores, retrieval_map  # noqa: E402
from benchmarks.synthetic import synthetic_counts  # noqa: E402

#: The files of the cross-study pairs (benchmarks/crossstudy_tasks.py).
CROSSSTUDY_FILES = [
    "pbmc3k.h5ad",
    "baron_human_pancreas.h5ad",
    "cellbench_celseq2.h5ad",
    "cellbench_dropseq.h5ad",
]


def test_synthetic_counts_are_sparse_seeded_and_typed():
    a, b = (
        synthetic_counts(1200, n_genes=300, n_types=4, seed=3),
        synthetic_counts(1200, n_genes=300, n_types=4, seed=3),
    )
    assert a.shape == (1200, 300) and a.X.format == "csr" and a.X.dtype == np.float32
    assert (a.X != b.X).nnz == 0
    assert 0.01 < a.X.nnz / (1200 * 300) < 0.6
    assert np.array_equal(a.X.data, np.round(a.X.data))
    assert set(a.obs["cell_type"].cat.categories) == {f"type_{t}" for t in range(4)}
    other = synthetic_counts(1200, n_genes=300, n_types=4, seed=4)
    assert (a.X != other.X).nnz > 0


def test_label_scores_average_over_the_true_classes_only():
    scores = label_scores(["a", "a", "b", "b"], ["a", "a", "b", "c"])
    assert scores["accuracy"] == 0.75
    assert scores["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_retrieval_map_is_one_for_separated_types_and_lower_when_mixed():
    rng = np.random.default_rng(0)
    labels = np.repeat(["x", "y"], 50)
    ref = rng.normal(size=(100, 5)) + np.where(labels == "x", 0.0, 20.0)[:, None]
    assert retrieval_map(ref[:10], labels[:10], ref, labels, k=20) == pytest.approx(1.0)
    assert retrieval_map(ref[:10], labels[:10], ref, rng.permutation(labels), k=20) < 0.8
    assert retrieval_map(ref[:3], np.array(["z"] * 3), ref, labels, k=20) == 0.0


@pytest.mark.slow
def test_quick_run_writes_the_report_and_raw_figures(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "quality,speed", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    raw = json.loads((tmp_path / "results.json").read_text())
    quality, speed = raw["quality"]["result"], raw["speed"]["result"]
    methods = {row["method"] for row in quality["rows"]}
    assert {"scquery kNN", "scquery classifier", "PCA + kNN (ingest's model)"} <= methods
    for row in quality["rows"]:
        assert 0.0 <= row["macro_f1"] <= 1.0
    for run in speed["runs"]:
        assert "error" not in run["train"] and "error" not in run["embed"]
        assert run["train"]["pretrain_cells_per_s"] > 0 and run["embed"]["peak_rss_gb"] > 0
        assert run["query"]["search_s"] > 0 and run["train"]["index_s"] > 0
        assert run["train"]["input_csr_gb"] > 0
    throughput = speed["throughput"]
    assert throughput["peak_gflops"] > 0
    for row in throughput["batches"]:
        assert (
            min(row[f"{s}_{w}"] for s in ("pretrain", "finetune") for w in ("matmuls", "in_memory", "sparse"))
            > 0
        )
    assert raw["quality"]["command"].startswith("python -m benchmarks --quick")
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Quality" in report and "## Speed and memory" in report


def test_a_run_of_one_part_keeps_the_figures_of_the_others(tmp_path):
    from benchmarks.report import write_report

    write_report(tmp_path, command="first", results={"one": [1, 2]}, order=["one", "two"])
    write_report(tmp_path, command="second", results={"two": {"x": 1}}, order=["one", "two"])
    raw = json.loads((tmp_path / "results.json").read_text())
    assert raw["one"]["command"] == "first" and raw["one"]["result"] == [1, 2]
    assert raw["two"]["command"] == "second" and raw["two"]["result"] == {"x": 1}


@pytest.mark.slow
def test_quick_scale_run_compares_the_index_with_its_peers(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "scale", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "results.json").read_text())["scale"]["result"]["rows"]
    ours = next(r for r in rows if r["method"] == "scquery")
    assert "IVF-Flat" in ours["setting"] and ours["recall"] >= 0.9
    assert ours["build_s"] > 0 and ours["leave_self_out_s"] > 0 and ours["query_s"] > 0
    assert {r["method"] for r in rows} >= {"scquery", "hnswlib", "faiss-hnsw"}
    assert "## Neighbour index at scale" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.slow
def test_quick_crossstudy_run_scores_every_method_and_scale(tmp_path):
    for name in CROSSSTUDY_FILES:  # skipped, and counted, by the real-data guard where they are absent
        shared_file(name)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "crossstudy", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())["crossstudy"]["result"]
    assert result["tasks"], "the shared data is there, but no cross-study task ran"
    methods = {row["method"] for row in result["tasks"]}
    assert {"scquery prediction", "scquery classifier", "PCA + kNN (ingest's model)"} <= methods
    held = [row for row in result["tasks"] if row["held_out"] and row["method"] == "scquery prediction"]
    assert held and all(0.0 <= row["held_out_unknown"] <= 1.0 for row in held)
    scales = {row["scale"]: row for row in result["scales"]}
    assert "refused" in scales["z-scored log1p CP10k"]
    assert scales["log1p CP10k"]["agreement_with_counts"] == 1.0
    assert "## Cross-study queries" in (tmp_path / "RESULTS.md").read_text()


def test_report_records_the_commit_of_each_part(tmp_path):
    from benchmarks.report import current_commit, write_report

    stored = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    commit = current_commit()
    assert re.fullmatch(r"[0-9a-f]{40}( \+ uncommitted changes)?", commit), commit
    write_report(
        tmp_path,
        command="python -m benchmarks --only speed",
        results={"speed": stored["speed"]["result"]},
        order=["speed"],
    )
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["speed"]["machine"]["commit"] == commit
    assert f"; commit {commit};" in (tmp_path / "RESULTS.md").read_text()
