"""The benchmark harness: its generator and metrics, and a quick end-to-end run."""

import json
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` lives at the repository root, outside the package

from benchmarks.metrics import label_scores, retrieval_map  # noqa: E402
from benchmarks.synthetic import synthetic_counts  # noqa: E402
from scquery.rules import QueryOptions  # noqa: E402

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
    threads = synthetic_counts(12_000, n_genes=300, n_types=4, seed=3, workers=3)  # chunks in threads
    assert (threads.X != synthetic_counts(12_000, n_genes=300, n_types=4, seed=3).X).nnz == 0


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


def quick_run(parts, out, *, timeout=900):
    """`python -m benchmarks --quick --only PARTS --out OUT` run to its end: the stored figures."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", parts, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_quick_run_writes_the_report_and_raw_figures(tmp_path):
    raw = quick_run("quality,speed", tmp_path, timeout=1200)
    quality, speed = raw["quality"]["result"], raw["speed"]["result"]
    methods = {row["method"] for row in quality["rows"]}
    assert {"scquery kNN", "scquery classifier", "PCA + kNN (ingest's model)"} <= methods
    for row in quality["rows"]:
        assert 0.0 <= row["macro_f1"] <= 1.0
    seeds = {row["seed"] for row in quality["rows"] if row["method"] == "scquery classifier"}
    assert seeds == {0, 1}  # the defaults train with two seeds in a quick run, the variants with one
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
    assert "(2 seeds)" in report


def test_training_rates_are_judged_on_the_clock_they_were_measured_by():
    from benchmarks.report import throughput_lines

    kinds = [
        f"{stage}_{kind}" for stage in ("pretrain", "finetune") for kind in ("matmuls", "in_memory", "sparse")
    ]
    batch = {"batch_size": 256, "shape_gflops": [100.0], **{k: 1000.0 for k in kinds}}
    batch |= {f"{k}_cpu": 800.0 for k in kinds}
    throughput = {
        "peak_gflops": 100.0,
        "peak_cpu_gflops": 50.0,
        "n_cells": 1000,
        "pretrain_flops_per_cell": 10e6,
        "pretrain_layer0_flops_per_cell": 8e6,
        "finetune_flops_per_cell": 4e6,
        "batches": [batch],
    }
    wall_only = [
        {"n_cells": 1000, "train": {"pretrain_cells_per_s": 8000.0, "finetune_cells_per_s": 20000.0}}
    ]
    text = "\n".join(throughput_lines(throughput, wall_only))
    # pretraining 8000 × 10 MFLOP = 80 GFLOP/s, 80 % of the peak; fine-tuning 20000 × 4 M = 80 %: met
    assert "| 1,000 | 0.800 | 0.800 |" in text
    assert (
        "Training at the default settings (CPU seconds of this process): not measured by this part." in text
    )
    assert text.count("| cells | pretraining | fine-tuning |") == 1
    assert "for each (wall seconds): met." in text
    both = [
        {
            "n_cells": 1000,
            "train": {
                **wall_only[0]["train"],
                "pretrain_cells_per_s_cpu": 1000.0,
                "finetune_cells_per_s_cpu": 1000.0,
            },
        }
    ]
    text = "\n".join(throughput_lines(throughput, both))
    assert "for each (CPU seconds of this process): not met." in text  # 10 and 4 GFLOP per CPU s of 50


def test_quality_summary_spreads_over_folds_and_over_seeds():
    from benchmarks.quality import summarize

    def row(method, fold, f1, **seed):
        return {
            "task": "t",
            "method": method,
            "fold": fold,
            "accuracy": f1,
            "macro_f1": f1,
            "map": None,
            "seconds": 1.0,
            **seed,
        }

    rows = [
        row("scquery classifier", fold, f1, seed=seed)
        for fold, seed, f1 in [(0, 0, 0.8), (0, 1, 0.9), (1, 0, 0.6), (1, 1, 0.7)]
    ]
    rows += [row("logistic regression", 0, 0.5), row("logistic regression", 1, 0.7)]
    summary = summarize(rows).set_index("method")
    ours, peer = summary.loc["scquery classifier"], summary.loc["logistic regression"]
    assert ours.macro_f1 == pytest.approx(0.75) and ours.folds == 2 and ours.seeds == 2
    assert ours.macro_f1_sd == pytest.approx(0.1)  # the folds' means over seeds: 0.85 and 0.65
    assert ours.macro_f1_seeds_sd == pytest.approx(np.std([0.7, 0.8], ddof=1))  # the seeds' means over folds
    assert peer.seeds == 1 and np.isnan(peer.macro_f1_seeds_sd) and peer.macro_f1_sd == pytest.approx(0.1)


def test_the_quality_report_breaks_a_trailing_classifier_down_by_type():
    from benchmarks.quality import summarize
    from benchmarks.report import quality_section

    def row(method, fold, per_type, seed=0):
        f1 = float(np.mean(list(per_type.values())))
        cells = dict.fromkeys(per_type, 10)
        scores = {"accuracy": f1, "macro_f1": f1, "map": None, "seconds": 1.0, "seed": seed}
        return {
            "task": "t",
            "method": method,
            "fold": fold,
            **scores,
            "f1_per_type": per_type,
            "cells_per_type": cells,
        }

    rows = [
        row("scquery classifier", fold, {"a": a, "b": 0.9}, seed)
        for fold, seed, a in [(0, 0, 0.6), (0, 1, 0.7), (1, 0, 0.8), (1, 1, 0.9)]
    ]
    rows += [row("logistic regression", fold, {"a": 0.9, "b": 0.9}) for fold in (0, 1)]
    text = "\n".join(quality_section(summarize(rows), rows))
    # seed 0's mean over the folds 0.7, seed 1's 0.8; the peer's 0.9 over 20 query cells
    assert "| t | a | 20 | 0.750 ± 0.071 [0.700, 0.800] | 0.900 (logistic regression) | -0.150 |" in text
    assert "| t | b | 20 | 0.900 ± 0.000 [0.900, 0.900] | 0.900 (logistic regression) | +0.000 |" in text
    rows += [
        row("scquery classifier", fold, {"a": 1.0, "b": 1.0}, seed) for fold in (0, 1) for seed in (2, 3)
    ]
    assert "Per type" not in "\n".join(quality_section(summarize(rows), rows))  # no longer trails
    assert "Per type" not in "\n".join(quality_section(summarize(rows[:4] + rows[4:6]), []))


def test_training_options_of_the_command_line_come_last(monkeypatch):
    from benchmarks import methods

    monkeypatch.setattr(methods, "OVERRIDES", {"epochs": 3})
    assert methods.scquery_config(quick=True, epochs=5).epochs == 3


def test_a_run_of_one_part_keeps_the_figures_of_the_others(tmp_path):
    from benchmarks.report import write_report

    write_report(tmp_path, command="first", results={"one": [1, 2]}, order=["one", "two"])
    write_report(tmp_path, command="second", results={"two": {"x": 1}}, order=["one", "two"])
    raw = json.loads((tmp_path / "results.json").read_text())
    assert raw["one"]["command"] == "first" and raw["one"]["result"] == [1, 2]
    assert raw["two"]["command"] == "second" and raw["two"]["result"] == {"x": 1}


@pytest.mark.slow
def test_quick_scale_run_compares_the_index_with_its_peers(tmp_path):
    rows = quick_run("scale", tmp_path)["scale"]["result"]["rows"]
    ours = next(r for r in rows if r["method"] == "scquery")
    assert "IVF-Flat" in ours["setting"] and ours["recall"] >= 0.9
    assert ours["build_s"] > 0 and ours["leave_self_out_s"] > 0 and ours["query_s"] > 0
    assert {r["method"] for r in rows} >= {"scquery", "hnswlib", "faiss-hnsw", "faiss-ivf-sq8"}
    sq8 = next(r for r in rows if r["method"] == "faiss-ivf-sq8")
    assert "nprobe" in sq8["setting"] and sq8["recall"] >= 0.9
    assert "## Neighbour index at scale" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.slow
def test_quick_crossstudy_run_scores_every_method_and_scale(tmp_path):
    for name in CROSSSTUDY_FILES:  # skipped, and counted, by the real-data guard where they are absent
        shared_file(name)
    result = quick_run("crossstudy", tmp_path)["crossstudy"]["result"]
    assert result["tasks"], "the shared data is there, but no cross-study task ran"
    methods = {row["method"] for row in result["tasks"]}
    assert {"scquery prediction", "scquery classifier", "PCA + kNN (ingest's model)"} <= methods
    held = [row for row in result["tasks"] if row["held_out"] and row["method"] == "scquery prediction"]
    assert held and all(0.0 <= row["held_out_unknown"] <= 1.0 for row in held)
    for row in result["tasks"]:  # scquery's answers on every seed, the first the table's; peers once
        assert ("seeds" in row) == row["method"].startswith("scquery")
        if "seeds" in row:
            assert len(row["seeds"]) == 2 and row["seeds"][0]["macro_f1"] == row["macro_f1"]
    scales = {row["scale"]: row for row in result["scales"]}
    assert "refused" in scales["z-scored log1p CP10k"]
    assert scales["log1p CP10k"]["agreement_with_counts"] == 1.0
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Cross-study queries" in report and "(2 seeds)" in report


@pytest.mark.slow
@pytest.mark.skipif(find_spec("jax") is None, reason="JAX is not installed")
def test_quick_gpu_run_says_no_gpu_is_present_and_runs_every_path_on_the_cpu(tmp_path):
    from benchmarks.gpu import PRECISIONS

    result = quick_run("gpu", tmp_path, timeout=1800)["gpu"]["result"]
    assert result["gpu"] is False and result["probe"]["platform"] == "cpu" and result["quick"]
    assert min(result["probe"]["peak_float32_tflops"], result["probe"]["peak_bfloat16_tflops"]) > 0
    assert 250 < result["data"]["values_per_cell"] < 400  # about 300 values a cell
    stages = ("pretrain", "finetune")
    paths = {(fit["stage"], fit["precision"], fit["pipeline"]) for fit in result["fits"]}
    assert paths == {(s, p, "device") for s in stages for p in PRECISIONS} | {
        (s, "float32", "host") for s in stages
    }
    for fit in result["fits"]:
        for run in fit["runs"]:
            assert min(run[key] for key in ("cells_per_s", "input_us", "dispatch_us", "device_us")) > 0
    assert result["train"]["train_s"] > result["train"]["read_s"] > 0
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Training on a GPU" in report and "**No GPU present**" in report


def test_a_condition_programme_is_raised_in_the_chosen_cells_only():
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from benchmarks.crossstudy_tasks import Task
    from benchmarks.unknown import with_programme

    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(1.0, (20, 8)).astype(np.float32))
    genes = [f"G{i}" for i in range(6)] + ["ISG15", "MX1"]
    obs = pd.DataFrame({"label": ["a"] * 20}, index=[f"c{i}" for i in range(20)])
    query = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=genes))
    task = Task("pair", query, query, "counts", "counts")
    cells = np.arange(10)
    changed, raised = with_programme(task, cells, ["ISG15", "MX1", "NOT_THERE"])
    assert raised == 2
    before, after = counts.toarray(), changed.X.toarray()
    np.testing.assert_array_equal(after[10:], before[10:])  # the other cells
    np.testing.assert_array_equal(after[:, :6], before[:, :6])  # the other genes
    assert (after[:10, 6:] >= 2 * before[:10, 6:]).all() and (after[:10, 6:] > 0).all()
    assert np.array_equal(after, np.rint(after))  # counts stay counts
    assert query.X is counts  # the task's query is not modified


def test_simulated_mouse_genes_split_paralogues_whole_and_sum_shared_orthologues():
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from benchmarks.species import one_to_one, with_paralogues

    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(50, 4)).astype(np.float32)
    human = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=["A", "B", "C", "D"]))
    pairs = pd.DataFrame(
        [("A", "a1"), ("A", "a2"), ("B", "bc"), ("C", "bc"), ("D", "d"), ("E", "e")],
        columns=["human", "mouse"],
    )
    mouse = with_paralogues(human, pairs, seed=0)
    assert sp.issparse(mouse.X) and list(mouse.var_names) == ["a1", "a2", "bc", "d"]
    got = mouse.to_df()
    np.testing.assert_array_equal(got["a1"] + got["a2"], counts[:, 0])  # A split whole between a1, a2
    assert 0 < (got["a1"] > 0).mean() < 1 and 0 < (got["a2"] > 0).mean() < 1
    np.testing.assert_array_equal(got["bc"], counts[:, 1] + counts[:, 2])
    np.testing.assert_array_equal(got["d"], counts[:, 3])
    np.testing.assert_array_equal(with_paralogues(human, pairs, seed=0).X.toarray(), mouse.X.toarray())
    renamed, used = one_to_one(human, pairs)
    assert list(renamed.var_names) == ["d"] and list(used["human"]) == ["D"]


@pytest.mark.slow
def test_quick_species_run_maps_a_simulated_mouse_query(tmp_path):
    rows = quick_run("species", tmp_path)["species"]["result"]["rows"]
    if not rows:
        pytest.skip("the shared data is absent: no human query to rename")
    ways = {(row["simulation"], row["way"]): row for row in rows}
    assert ways[("1:1 only", "species='mouse'")]["agreement_same_genes"] >= 0.98
    assert (
        ways[("1:1 only", "gene_map=FILE")]["agreement"] == ways[("1:1 only", "species='mouse'")]["agreement"]
    )
    assert (
        ways[("1:1 only", "species='mouse'")]["overlap_after"]
        > ways[("1:1 only", "species='mouse'")]["overlap_before"]
    )
    rebuilt = ways[("1:1 only", "species='mouse', missing genes rebuilt")]
    assert rebuilt["overlap_after"] == ways[("1:1 only", "species='mouse'")]["overlap_after"] < 1
    assert "## Another species, simulated" in (tmp_path / "RESULTS.md").read_text()


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


def test_labels_keep_a_stratified_share_and_the_report_checks_the_prediction():
    from benchmarks.labels import NO_PROPAGATION, NONE, QUERY, REFERENCE_ALONE, keep_labels, summarize
    from benchmarks.report import labels_section

    labels = np.repeat(["a", "b", "c"], [300, 50, 1])
    keep = keep_labels(labels, 0.01, seed=0)
    assert [int(keep[labels == name].sum()) for name in "abc"] == [3, 2, 1]
    assert not np.array_equal(keep, keep_labels(labels, 0.01, seed=1))

    def row(method, f1, *, seed, task="t", split="tuning", head=np.nan, unknown=np.nan):
        return {
            "task": task,
            "split": split,
            "fraction": 0.05,
            "seed": seed,
            "method": method,
            "n_labelled": 10,
            "macro_f1": f1 + seed / 100,
            "accuracy": f1,
            "classifier_macro_f1": head,
            "unknown": unknown,
            "propagated": 0,
            "seconds": 1.0,
        }

    rows = []
    for seed in (0, 1):
        rows += [
            row(QUERY, 0.90, seed=seed, head=0.92, unknown=0.02),
            row(NO_PROPAGATION, 0.50, seed=seed, head=0.92, unknown=0.4),
            row(REFERENCE_ALONE, 0.92, seed=seed, head=0.92, unknown=0.0),
            row(NONE, 0.80, seed=seed, head=0.85, unknown=0.08),
            row("logistic regression", 0.88, seed=seed),
            row(QUERY, 0.70, seed=seed, task="v", split="validation", head=0.70, unknown=0.01),
            row(NONE, 0.75, seed=seed, task="v", split="validation", head=0.75, unknown=0.01),
        ]
    summary = summarize(rows)
    assert summary.runs.tolist() == [2] * 7
    result = {
        "seeds": [0, 1],
        "folds": "a test",
        "summary": summary.to_dict("records"),
        "skipped": [{"task": "w", "split": "validation", "why": "Too few genes."}],
        "lowered": [{"task": "v", "split": "validation", "why": "Few genes.", "overlap": 0.2}],
    }
    text = "\n".join(labels_section(result))
    assert "### t (tuning, 2 runs)" in text and "### v (validation, 2 runs)" in text
    assert "0.905 ± 0.005 (head 0.920, Unknown 2.0%)" in text
    assert "- w (validation): not run: Too few genes." in text
    assert "- v (validation): its query study read at a gene overlap of 0.2: Few genes." in text
    tuning, alone, validation = (
        text.split(f"Targets at 5% labels, {split} pairs, {method}")[1].split("Targets at")[0]
        for split, method in (("tuning", QUERY), ("tuning", REFERENCE_ALONE), ("validation", QUERY))
    )
    assert f"Targets at 5% labels, validation pairs, {REFERENCE_ALONE}" not in text  # not run there
    assert "- the prediction ≥ the classifier head − 0.01: met on 0 of 1." in tuning
    assert "- known cells called Unknown ≤ 5 %: met on 1 of 1 (t 5%)." in tuning
    assert "- the prediction ≥ no pretraining + 0.03: met on 1 of 1 (t 5%)." in tuning
    assert "- the prediction ≥ the best peer + 0.03: met on 0 of 1." in tuning
    both = "- the prediction ≥ no pretraining + 0.03 and ≥ logistic regression + 0.03 (target: half): met on"
    assert f"{both} 0 of 1." in tuning  # 0.905 against logistic regression's 0.885
    assert f"{both} 1 of 1 (t 5%)." in alone  # 0.925 against 0.805 and 0.885
    assert "- the prediction ≥ the classifier head − 0.01: met on 1 of 1 (t 5%)." in alone
    assert "- the prediction not below no pretraining by more than 0.01: met on 0 of 1." in validation
    assert "- the prediction ≥ the classifier head − 0.01: met on 1 of 1 (v 5%)." in validation


def test_the_split_names_every_pair_once_and_each_kind_has_a_validation_pair():
    from benchmarks import crossstudy_tasks, pairs

    names = set(crossstudy_tasks.HELD_OUT) | set(pairs.PAIRS)
    assert sorted(pairs.TUNING + pairs.VALIDATION) == sorted(names)
    assert set(pairs.HELD_OUT) == names
    validated = {kind for name in pairs.VALIDATION if name in pairs.PAIRS for kind in pairs.PAIRS[name].kinds}
    assert {"cross-species", "one tissue", "novel types", "condition", "stimulation"} <= validated
    assert all(pairs.split_of(name) == "tuning" for name in crossstudy_tasks.HELD_OUT)


def test_an_absent_cache_skips_each_pair_with_one_line_saying_how_to_prepare_it(tmp_path):
    from benchmarks import pairs

    lines = []
    assert list(pairs.tasks(cache=tmp_path, log=lines.append)) == []
    assert len(lines) == len(pairs.PAIRS)
    assert all("prepare_pairs" in line or "shared data" in line for line in lines)


def test_upper_cased_mouse_genes_get_their_mouse_spelling_back():
    from benchmarks.prepare_pairs import mouse_symbols

    assert mouse_symbols(["CD3E", "MT-ND5", "0610007P14RIK", "GM12345"]) == [
        "Cd3e",
        "mt-Nd5",
        "0610007P14Rik",
        "Gm12345",
    ]


def test_the_cached_pairs_load_with_their_mapped_types_and_held_out_tasks():
    from benchmarks import pairs

    cache = pairs.cache_dir()
    if not all((cache / dataset.file).is_file() for dataset in pairs.DATASETS.values()):
        pytest.skip(f"the pairs' cache {cache} is absent: prepare it with {pairs.PREPARE}")
    if not all((pairs.DATA_DIR / file).is_file() for file, _, _ in pairs.SHARED.values()):
        pytest.skip(f"the shared data ({pairs.DATA_DIR}) is absent")
    seen = set()
    for task in pairs.tasks(log=lambda line: None):
        pair = pairs.PAIRS[task.pair]
        reference, query = set(task.reference.obs["label"]), set(task.query.obs["label"])
        assert reference <= set(pair.reference_labels.values()) and query <= set(pair.query_labels.values())
        assert task.novel == sorted(query - set(pair.reference_labels.values()))  # held-out types aside
        assert not reference & set(task.held_out) and set(task.held_out) <= query
        if task.query_species is None:
            assert list(task.reference.var_names) == list(task.query.var_names)
        else:
            assert task.query_species == "mouse" and task.query.var_names.str.contains("[a-z]").mean() > 0.9
            reference, query_on_reference = pairs.on_shared_genes(task)
            assert list(reference.var_names) == list(query_on_reference.var_names) and reference.n_vars > 5000
        for data, values in ((task.reference, task.reference_values), (task.query, task.query_values)):
            assert values in ("counts", "log1p") and data.n_obs and data.n_vars
            if values == "counts":
                assert np.array_equal(data.X.data, np.rint(data.X.data))
        seen.add(task.pair)
    assert seen >= set(pairs.VALIDATION)


def test_the_rejection_curve_counts_new_and_known_cells_at_each_threshold():
    from benchmarks.unknown_pairs import _curve

    new = np.array([True, True, True, False, False, False, False])
    score = np.array([0.9, 0.6, 0.2, 0.1, 0.3, 0.55, 0.0])
    curve = _curve(score, new, 0.5)
    assert curve["default"] == {"caught": 2 / 3, "known_unknown": 0.25}
    # 12 new-known pairs, the new cell ranked above in 10 of them
    assert curve["auroc"] == pytest.approx(10 / 12)
    at = {point["threshold"]: point for point in curve["curve"]}
    assert at[0.0]["caught"] == 1.0 and at[1.0]["caught"] == 0.0 and at[0.5]["known_unknown"] == 0.25
    assert _curve(score[~new], new[~new], 0.5)["auroc"] is None  # no new cells: no AUROC


def test_scmap_cosine_finds_the_nearest_centroid_and_its_similarity():
    import anndata as ad
    import scipy.sparse as sp

    from benchmarks.unknown_pairs import scmap_cosine

    counts = np.zeros((4, 6), dtype=np.float32)
    counts[0, :3] = counts[1, :3] = 10  # type A: genes 0-2
    counts[2, 3:] = counts[3, 3:] = 10  # type B: genes 3-5
    reference = ad.AnnData(sp.csr_matrix(counts))
    reference.obs["label"] = ["A", "A", "B", "B"]
    query = ad.AnnData(sp.csr_matrix(np.array([[0, 0, 0, 5, 5, 5], [5, 5, 0, 0, 0, 5]], dtype=np.float32)))
    nearest, similarity = scmap_cosine(reference, query, reference_values="counts", query_values="counts")
    assert list(nearest) == ["B", "A"]
    # the second cell shares two of A's three genes, at equal values: cosine 2/3
    assert similarity == pytest.approx([1.0, 2 / 3], rel=1e-4)


def _pairs_row(
    pair, split, held_out, *, new, caught, known, auroc, conditions=None, celltypist=True, head_right=None
):
    curve = [{"threshold": t, "caught": 1 - t, "known_unknown": (1 - t) / 4} for t in (0.0, 0.5, 1.0)]

    def rejection(value):
        at = {"caught": caught, "known_unknown": known}
        return {"auroc": value if new else None, "default": at, "curve": curve}

    row = {
        "pair": pair,
        "split": split,
        "held_out": held_out,
        "novel": [],
        "cells": 100,
        "new_cells": new,
        "prediction_f1": 0.9,
        "classifier_f1": 0.92,
        "peer_f1": {"PCA + kNN": 0.85, "scmap-cosine": 0.88},
        "caught": caught,
        "known_unknown": known,
        "known_unknown_head_right": head_right,
        "refused_at_defaults": None,
        "rejection": {"scquery": rejection(auroc), "scmap-cosine": rejection(0.7)},
    }
    if celltypist:
        row["rejection"]["CellTypist"] = rejection(0.6)
    if conditions:
        row["conditions"] = conditions
    return row


def test_the_unknown_report_shows_the_tuning_then_the_validation_pairs(tmp_path):
    from benchmarks.report import unknown_pairs_figure, unknown_section

    pairs = [
        _pairs_row(
            "v", "validation", [], new=0, caught=None, known=0.01, auroc=None, conditions={"ifn": 0.02}
        ),
        _pairs_row("t", "tuning", ["B"], new=30, caught=0.9, known=0.04, auroc=0.96, head_right=0.01),
        _pairs_row("t", "tuning", ["NK"], new=20, caught=0.5, known=0.02, auroc=0.8, head_right=0.0),
        _pairs_row("v", "validation", ["T"], new=40, caught=0.85, known=0.1, auroc=0.9),
    ]

    def seed(prediction, caught, known, auroc):
        keys = ("prediction_f1", "classifier_f1", "caught", "known_unknown", "auroc")
        return dict(zip(keys, (prediction, 0.92, caught, known, auroc), strict=True))

    pairs[1]["seeds"] = [seed(0.9, 0.9, 0.04, 0.96), seed(0.8, 0.7, 0.02, 0.9)]  # the tuning rows' seeds
    pairs[2]["seeds"] = [seed(0.9, 0.5, 0.02, 0.8), seed(0.9, 0.9, 0.0, 0.7)]
    result = {"held_out": [], "conditions": [], "per_type": [], "pairs": pairs}
    text = "\n".join(unknown_section(result))
    assert "| t | B | 0.850 ± 0.071 [0.800, 0.900] | 0.920 ± 0.000 [0.920, 0.920] |" in text
    assert (
        "- Seed by seed: median AUROC scquery 0.880 / 0.800; mean caught 70.0% / 80.0%; mean known Unknown "
        "3.0% / 1.0%; tasks with new cells that catch ≥ 80 % with ≤ 5 % of known cells Unknown 1 of 2 / 1 "
        "of 2." in text
    )
    assert "Tuning set over 2 seeds" in text and "Validation set over" not in text  # one seed: no table
    assert "\n## " not in text.split("## Unknown calls", 1)[1]  # sub-sections: RESULTS.md's commit check
    assert text.index("#### Tuning set") < text.index("#### Validation set (the one that counts)")
    assert (
        "| t | B | 30 (B) | 0.900 | 0.920 | 0.880 (scmap-cosine) | 90.0% | 4.0% (1.0% head right) | "
        "0.960 (90.0% / 4.0%) |" in text
    )
    assert "| v | – | 0 | 0.900 | 0.920 | 0.880 (scmap-cosine) | – | 1.0% | – | – | – | ifn 2.0% |" in text
    assert (
        "- Tuning, 2 tasks: median AUROC scquery 0.880 (2 tasks), CellTypist 0.600 (2 tasks), scmap-cosine "
        "0.700 (2 tasks); mean caught 70.0% over the 2 tasks with new cells; mean known Unknown 3.0% "
        "(0.5% of cells the head labels right); 1 of 2 tasks with new cells catch ≥ 80 % with ≤ 5 % of "
        "known cells Unknown" in text
    )
    assert "- Validation, 2 tasks: median AUROC scquery 0.900 (1 task)" in text
    assert "0 of 1 task with new cells catch" in text and "CellTypist was not run" not in text
    assert "- Whole pairs: prediction ≥ head - 0.01 on 0 of 1; ≥ the best peer on 1 of 1." in text
    unknown_pairs_figure(result, tmp_path / "unknown_pairs.png")
    assert (tmp_path / "unknown_pairs.png").stat().st_size > 0
    # without CellTypist, and without any pair's data
    for row in pairs:
        del row["rejection"]["CellTypist"]
    assert "CellTypist was not run" in "\n".join(unknown_section(result))
    empty = "\n".join(unknown_section({**result, "pairs": []}))
    assert "No pair's data was here" in empty and "unknown_pairs.png" not in empty


def test_the_threshold_table_shows_the_tuning_sets_choice_and_what_it_gives_on_validation():
    from benchmarks.report import thresholds_lines

    def row(split, points):
        return {
            "split": split,
            "thresholds": {
                "min_confidence": [
                    {"value": value, "caught": caught, "known_unknown": known}
                    for value, caught, known in points
                ]
            },
        }

    rows = [  # at 0.6 both tuning tasks with new cells meet the target; the default 0.5 only one
        row("tuning", [(0.5, 0.7, 0.01), (0.6, 0.85, 0.02), (0.7, 0.9, 0.08)]),
        row("tuning", [(0.5, 0.9, 0.0), (0.6, 0.9, 0.01), (0.7, 0.95, 0.01)]),
        row("tuning", [(0.5, None, 0.03), (0.6, None, 0.05), (0.7, None, 0.2)]),  # no new cells
        row("validation", [(0.5, 0.8, 0.05), (0.6, 0.82, 0.1), (0.7, 0.9, 0.2)]),
    ]
    text = "\n".join(thresholds_lines(rows))
    assert "| `min_confidence` | 0.5 (default) | 1 of 2 | 80.0% | 1.3% | 1 of 1 | 80.0% | 5.0% |" in text
    choice = "| `min_confidence` | 0.6 (the tuning set's choice) | 2 of 2 | 87.5% | 2.7% | 0 of 1 | 82.0% |"
    assert choice + " 10.0% |" in text
    assert thresholds_lines([{"split": "tuning"}]) == []  # rows measured before the sweep
    assert thresholds_lines(rows[3:]) == []  # no tuning task to choose on


@pytest.mark.slow
def test_the_pairs_harness_measures_a_validation_task_of_the_cache():
    from benchmarks import pairs
    from benchmarks.unknown_pairs import run_unknown_pairs

    cache = pairs.cache_dir()
    if not all((cache / dataset.file).is_file() for dataset in pairs.DATASETS.values()):
        pytest.skip(f"the pairs' cache {cache} is absent: prepare it with {pairs.PREPARE}")
    lines = []
    (row,) = run_unknown_pairs(quick=True, splits=("validation",), log=lines.append)["rows"]
    assert row["split"] == "validation" and row["new_cells"] > 0  # the first task with new cells
    assert 0.0 <= row["caught"] <= 1.0 and 0.0 <= row["known_unknown"] <= 1.0
    assert 0.0 <= row["known_unknown_head_right"] <= row["known_unknown"]
    ours = row["rejection"]["scquery"]
    assert 0.0 <= ours["auroc"] <= 1.0 and "scmap-cosine" in row["rejection"]
    assert ours["default"] == {"caught": row["caught"], "known_unknown": row["known_unknown"]}
    first, second = row["seeds"]  # two seeds when quick, the first the row's own model
    assert (first["caught"], first["known_unknown"], first["auroc"]) == (
        row["caught"],
        row["known_unknown"],
        ours["auroc"],
    )
    assert 0.0 <= second["caught"] <= 1.0 and 0.0 <= second["auroc"] <= 1.0
    assert {"PCA + kNN", "logistic regression", "scmap-cosine"} <= set(row["peer_f1"])
    assert lines[-1].startswith("validation: ")
    defaults = QueryOptions()
    for option, sweep in row["thresholds"].items():  # the replay at the defaults is the query's calls
        (at,) = [point for point in sweep if point["value"] == getattr(defaults, option)]
        assert (at["caught"], at["known_unknown"]) == (row["caught"], row["known_unknown"]), option


def test_the_threshold_sweep_replays_each_rule_alone_on_the_written_scores():
    from benchmarks.unknown_pairs import threshold_sweep

    nan = np.nan
    obs = pd.DataFrame(
        {
            "scquery_unknown_reason": [
                "",
                "low confidence",
                "new cluster",
                "markers differ",
                "no reference genes",
            ],
            "scquery_confidence": np.float32([0.9, 0.4, 0.9, 0.9, nan]),
            "scquery_cluster_novelty": np.float32([0.0, 0.0, 2.0, 0.0, nan]),
            "scquery_marker_agreement": np.float32([1.0, 1.0, 1.0, 0.3, nan]),
            "scquery_unique_markers": np.float32([nan, nan, nan, nan, nan]),
        }
    )
    new = np.array([False, True, True, True, True])
    sweep = threshold_sweep(obs, new)

    def at(option, value):
        (point,) = [p for p in sweep[option] if p["value"] == value]
        return point["caught"], point["known_unknown"]

    assert at("min_confidence", 0.5) == (1.0, 0.0)  # the defaults: every new cell, no known one
    assert at("min_confidence", 0.95) == (1.0, 1.0)  # the known cell's 0.9 is now too low
    assert at("min_confidence", 0.0) == (0.75, 0.0)  # the cell at 0.4 is kept; none expressed stays
    assert at("novelty_threshold", 2.25) == (0.75, 0.0)
    assert at("min_marker_agreement", 0.25) == (0.75, 0.0)
    assert at("min_unique_markers", 1.0) == (1.0, 0.0)  # not judged (NaN) is kept


def test_the_precision_report_judges_the_largest_change_of_a_tasks_mean_accuracy():
    from benchmarks.report import precision_section

    def rows(task, run, accuracies):
        return [
            {"task": task, "fold": str(i), "run": run, "seconds": 1.0}
            | {
                f"{h}_{m}": value
                for h in ("knn", "classifier", "prediction")
                for m in ("accuracy", "macro_f1")
            }
            for i, value in enumerate(accuracies)
        ]

    found = [
        *rows("a", "float32", [0.90, 0.80]),
        *rows("a", "mixed_bfloat16", [0.91, 0.80]),  # the mean moves by 0.005
        *rows("a", "float32, next seed", [0.90, 0.82]),
        *rows("b", "float32", [0.5]),
        *rows("b", "mixed_bfloat16", [0.5]),
        *rows("b", "float32, next seed", [0.5]),
    ]
    met = "\n".join(precision_section({"rows": found, "max_change": 0.005, "seed": 0}))
    assert "| a | kNN vote | 0.850 | 0.855 | +0.0050 | +0.0100 |" in met
    assert "the largest change is +0.0050 (a, kNN vote), met." in met
    found[3]["classifier_accuracy"] = 0.70  # mixed, the second fold's classifier: the mean falls by 0.045
    assert "is -0.0450 (a, classifier), not met." in "\n".join(
        precision_section({"rows": found, "max_change": 0.005, "seed": 0})
    )


@pytest.mark.slow
def test_quick_precision_run_scores_each_split_in_both_precisions_and_with_the_next_seed(tmp_path):
    rows = quick_run("precision", tmp_path)["precision"]["result"]["rows"]
    assert [row["run"] for row in rows] == ["float32", "mixed_bfloat16", "float32, next seed"]
    assert all(0.9 < row["classifier_accuracy"] <= 1.0 for row in rows)  # separable synthetic types
    assert "## Mixed precision (`--only precision`)" in (tmp_path / "RESULTS.md").read_text()


def test_seeds_section_breaks_down_by_type_the_pairs_where_the_head_trails():
    from benchmarks.report import seeds_section

    def run(task, seed, head, per_type, setting="scquery", query_s=2.0):
        return {
            "task": task,
            "split": "tuning",
            "setting": setting,
            "seed": seed,
            "head": head,
            "knn": head,
            "prediction": head,
            "train_s": 1.0,
            "query_s": query_s,
            "head_per_type": per_type,
        }

    rows = [run("trails", s, 0.90, {"A": 1.0, "B": b}) for s, b in ((0, 0.8), (1, 0.8))]
    rows += [run("leads", s, 0.99, {"A": 1.0, "C": 0.98}) for s in (0, 1)]
    rows += [
        run(t, s, 0.9, {}, setting="two heads", query_s=q)
        for t, q in (("trails", 2.2), ("leads", 3.2))
        for s in (0, 1)
    ]
    rows += [run("leads", 2, 0.9, {}, setting="two heads", query_s=60.0)]  # one slow call: the median holds
    rows += [
        {"task": t, "split": "tuning", "setting": m, "seed": "ensemble", "head": 0.9}
        for t in ("trails", "leads")
        for m in ("scquery", "two heads")
    ]
    peers = [
        {"task": "trails", "method": "LR", "macro_f1": 0.95, "per_type": {"A": 1.0, "B": 0.9}},
        {"task": "trails", "method": "kNN", "macro_f1": 0.80, "per_type": {"A": 0.9, "B": 0.7}},
        {"task": "leads", "method": "LR", "macro_f1": 0.95, "per_type": {"A": 1.0, "C": 0.9}},
    ]
    cells = [{"task": "trails", "counts": {"A": 50, "B": 3}}, {"task": "leads", "counts": {"A": 9, "C": 9}}]
    text = "\n".join(seeds_section({"rows": rows, "peers": peers, "cells": cells, "seeds": [0, 1]}))
    assert "| trails | B | 3 | 0.800 ± 0.000 [0.800, 0.800] | 0.900 (LR) | -0.100 |" in text
    assert "| leads | C |" not in text
    assert "| trails | two heads | 0.900 ± 0.000 [0.900, 0.900] |" in text and "| 0.900 | 1.0 | 2.2 |" in text
    assert "- Query time against the defaults', two heads: 1.35× (5.4 s against 4.0 s" in text
    assert "summed; ≤ 1.5×: met)." in text


@pytest.mark.slow
def test_pretraining_section_sets_each_variant_against_the_defaults_and_no_pretraining():
    from benchmarks.labels import summarize
    from benchmarks.pretraining import DEFAULTS, NONE, REFERENCE_ONLY
    from benchmarks.report import pretraining_section

    scores = {  # (task, fraction) -> variant -> (prediction, head)
        ("t", 0.01): {DEFAULTS: (0.80, 0.82), "wider": (0.70, 0.75), NONE: (0.70, 0.72)},
        ("t", 0.05): {DEFAULTS: (0.90, 0.91), "wider": (0.93, 0.93), NONE: (0.89, 0.90)},
        ("v", 0.01): {DEFAULTS: (0.50, 0.50), NONE: (0.60, 0.60)},
    }
    rows = [
        {
            "task": task,
            "split": "validation" if task == "v" else "tuning",
            "fraction": fraction,
            "seed": 0,
            "method": name,
            "n_labelled": 10,
            "macro_f1": f1,
            "accuracy": f1,
            "classifier_macro_f1": head,
            "unknown": 0.0,
            "propagated": 0,
            "seconds": 1.0,
        }
        for (task, fraction), variants in scores.items()
        for name, (f1, head) in variants.items()
    ]
    result = {
        "seeds": [0],
        "variants": {
            DEFAULTS: {},
            REFERENCE_ONLY: {},
            "wider": {"hidden_sizes": [1000, 100]},
            NONE: {"pretrain": False},
        },
        "summary": summarize(rows).to_dict("records"),
        "skipped": [{"task": "w", "split": "validation", "why": "Too few genes."}],
    }
    text = "\n".join(pretraining_section(result))
    assert "### t (tuning)" in text and "### v (validation)" in text
    assert f'{REFERENCE_ONLY}: the defaults, `unlabeled` not given; wider: `{{"hidden_sizes"' in text
    assert "- w (validation): not run: Too few genes." in text
    text, validation = text.split("Each variant over the 1 validation tasks and fractions:")
    assert "Each variant over the 2 tuning tasks and fractions:" in text
    assert (
        f"- {DEFAULTS}: mean prediction 0.500, head 0.500; ≥ +0.03 over no pretraining on 0 of 1, "
        in validation
    )
    assert "more than 0.01 below it on 1" in validation
    assert "## Where pretraining pays (`--only pretraining`)" in text
    assert (
        "| wider | 0.700 ± 0.000 (head 0.750, Unknown 0.0%) | 0.930 ± 0.000 (head 0.930, Unknown 0.0%) |"
        in text
    )
    defaults_line = (
        f"- {DEFAULTS}: mean prediction 0.850, head 0.865; ≥ +0.03 over no pretraining on 1 of 2, "
    )
    assert defaults_line + "more than 0.01 below it on 0" in text
    wider = "- wider: mean prediction 0.815, head 0.840 (-0.035 and -0.025 against the defaults); "
    assert wider + "≥ +0.03 over no pretraining on 1 of 2, more than 0.01 below it on 0" in text
    assert f"- {NONE}: mean prediction 0.795, head 0.810 (-0.055 and -0.055 against the defaults)" in text


@pytest.mark.slow
def test_quick_pretraining_run_scores_every_variant(tmp_path):
    from benchmarks.pretraining import QUICK_VARIANTS

    result = quick_run("pretraining", tmp_path)["pretraining"]["result"]
    assert list(result["variants"]) == list(QUICK_VARIANTS)
    assert [row["method"] for row in result["rows"]] == list(QUICK_VARIANTS)
    assert all(0.0 <= row[m] <= 1.0 for row in result["rows"] for m in ("macro_f1", "classifier_macro_f1"))
    assert "## Where pretraining pays" in (tmp_path / "RESULTS.md").read_text()


def test_quick_seeds_run_gives_every_seed_and_their_ensemble(tmp_path):
    for name in CROSSSTUDY_FILES:  # skipped, and counted, by the real-data guard where they are absent
        shared_file(name)
    result = quick_run("seeds", tmp_path)["seeds"]["result"]
    for setting in ("scquery", "scquery, no pretraining"):
        runs = [row for row in result["rows"] if row["setting"] == setting]
        assert [row["seed"] for row in runs] == [*result["seeds"], "ensemble"]
        assert all(0.0 <= row[m] <= 1.0 for row in runs[:-1] for m in ("head", "knn", "prediction"))
    assert {"PCA + kNN (ingest's model)"} <= {row["method"] for row in result["peers"]}
    types = set(result["cells"][0]["counts"])
    assert all(set(row["per_type"]) == types for row in result["peers"])
    assert set(result["rows"][0]["head_per_type"]) == types
    assert "## Steadiness over seeds" in (tmp_path / "RESULTS.md").read_text()
