"""RESULTS.md (tables with the machine, versions and date) and results.json (raw figures)."""

import json
import os
import platform
import subprocess
import textwrap
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

PACKAGES = [
    "scquery",
    "tensorflow",
    "jax",
    "keras",
    "scanpy",
    "anndata",
    "scikit-learn",
    "faiss-cpu",
    "numpy",
]
#: Another distribution of the same module: TensorFlow's CPU-only build (what the Makefile installs on
#: Linux x86-64).
ALIASES = {"tensorflow": "tensorflow-cpu"}
TARGETS = {
    "training_fraction_of_peak": 0.7,
    "index_1m_s": 60.0,
    "index_1m_moonshot_s": 15.0,
    "recall": 0.95,
    "query_100k_vs_1m_index_s": 10.0,
}


#: The benchmarks' own outputs: a run that changed only these ran on the commit itself.
OUTPUTS = [
    "benchmarks/RESULTS.md",
    "benchmarks/results.json",
    "benchmarks/labels.png",
    "benchmarks/unknown_pairs.png",
]


def current_commit():
    """The git commit of the code being run (`+ uncommitted changes` where tracked files other than
    the benchmarks' outputs differ from it), or why there is none."""
    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{o}" for o in OUTPUTS)],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not run from a git checkout)"
    return head.stdout.strip() + (" + uncommitted changes" if changed.stdout.strip() else "")


def _installed(name):
    try:
        version(name)
    except PackageNotFoundError:
        return False
    return True


def machine():
    """The machine and software the run used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in PACKAGES:
        found = [name for name in (package, ALIASES.get(package)) if name and _installed(name)]
        versions[package] = version(found[0]) if found else "not installed"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "gpu": _gpus(),
    }


def _flops(tflops):
    """A rate in TFLOP/s, or GFLOP/s below one TFLOP/s."""
    return f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.1f} GFLOP/s"


def _gpus():
    """The machine's GPUs by name (`nvidia-smi`), or 'none'."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return ", ".join(names) if done.returncode == 0 and names else "none"


def _cell(value, digits=3):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def quality_section(summary, runs=()):
    """Per task: every method's mean (± sd over folds) accuracy, macro-F1 and MAP; where the classifier
    at the defaults trails the best peer, each type's F1 (`runs`: the score rows, where they kept it)."""
    parts = [
        "## Quality",
        "",
        "Mean over folds (± standard deviation over the folds); MAP: mean average precision of the "
        "100 nearest reference cells in the method's embedding. Query cells of types the reference "
        "lacks are left out; scquery's 'Unknown' (rejected) predictions count as errors. scquery at "
        "its defaults trains with several seeds on every fold: its figures are the mean over folds "
        "and seeds, and 'sd over seeds' is the standard deviation of each seed's macro-F1 (its mean "
        "over the folds); the variants and the peers run once.",
        "",
    ]
    for task, table in summary.groupby("task", sort=False):
        rows = [
            [
                r.method,
                f"{r.accuracy:.3f} ± {r.accuracy_sd:.3f}",
                f"{r.macro_f1:.3f} ± {r.macro_f1_sd:.3f}",
                f"{r.macro_f1_seeds_sd:.3f} ({r.seeds} seeds)" if r.seeds > 1 else "–",
                r.map,
                r.seconds,
                r.folds,
            ]
            for r in table.itertuples()
        ]
        peers = table[~table.method.str.startswith("scquery")]
        best_peer = peers.macro_f1.max()
        ours = table.method.str.startswith("scquery") & ~table.method.str.contains(r"\(", regex=True)
        best_ours = table[ours].macro_f1.max()
        verdict = "met" if best_ours >= best_peer else "not met"
        parts += [
            f"### {task}",
            "",
            _table(["method", "accuracy", "macro-F1", "sd over seeds", "MAP", "seconds", "folds"], rows),
            "",
            f"Target macro-F1 ≥ best peer ({best_peer:.3f}): best scquery {best_ours:.3f}, {verdict}.",
            "",
        ]
        parts += _quality_trailing_types(task, table, peers, [r for r in runs if r["task"] == task])
    return parts


def _quality_trailing_types(task, summary, peers, rows):
    """Per type, the classifier at the defaults (each seed's mean over the folds) against the best peer
    (its mean over the folds), where the classifier's macro-F1 trails that peer's; `peers`: the
    summary's rows of the peers."""
    runs = pd.DataFrame([r for r in rows if "f1_per_type" in r])
    head = summary[summary.method == "scquery classifier"]
    if runs.empty or peers.empty or head.empty or head.macro_f1.iloc[0] >= peers.macro_f1.max():
        return []
    best = peers.sort_values("macro_f1").iloc[-1].method

    def per_type(method):
        found = runs[runs.method == method]
        return pd.DataFrame(list(found.f1_per_type), index=found.index).assign(seed=found.seed.fillna(0))

    ours = per_type("scquery classifier").groupby("seed").mean()
    counts = pd.DataFrame(list(runs[runs.method == best].cells_per_type)).sum().astype(int)
    peer = per_type(best).drop(columns="seed").mean()
    return _trailing_lines(_type_gaps(task, ours, best, peer, counts.to_dict()), "F1, mean over the folds")


def speed_section(speed):
    """Throughput and memory per size, the scaling table (10M extrapolated), and where training
    time goes next to the machine's large-matmul peak."""
    if "throughput" not in speed:
        return ["## Speed and memory", "", "Stored in an older form; rerun `--only speed`.", ""]
    n_query = speed["query_cells"]
    rows, scaling = [], []
    for run in speed["runs"]:
        train, embed, query = run["train"], run["embed"], run.get("query", {})
        if "error" in train:
            rows.append([f"{run['n_cells']:,}", train["error"], *[""] * 7])
            continue
        model_gb = train["model_gb"]
        rows.append(
            [
                f"{run['n_cells']:,}",
                train["pretrain_cells_per_s"],
                train["finetune_cells_per_s"],
                embed.get("embed_cells_per_s"),
                train["input_csr_gb"],
                train["train_peak_rss_gb"],
                (train["train_peak_rss_gb"] - model_gb) / train["input_csr_gb"],
                max(train["peak_rss_gb"], embed.get("peak_rss_gb", 0.0), query.get("peak_rss_gb", 0.0)),
            ]
        )
        scaling.append(
            [
                run["n_cells"],
                train["train_api_s"],
                train["index_s"],
                query.get("search_s"),
                query.get("query_s"),
            ]
        )
    if len(scaling) >= 2 and scaling[-1][0] >= 1_000_000:
        n, train_s, index_s, search_s, query_s = scaling[-1]
        small = scaling[-2]
        growth = _power(small[2], index_s, small[0], n)
        scaling.append(
            [
                "10,000,000 (extrapolated)",
                train_s * 10,
                index_s * 10**growth,
                None if search_s is None else search_s * 10 ** _power(small[3], search_s, small[0], n),
                None,
            ]
        )
    parts = [
        "## Speed and memory (synthetic counts, 2,000 genes, 10 types)",
        "",
        _table(
            [
                "cells",
                "pretraining cells/s (2nd epoch, all layers)",
                "fine-tuning cells/s (2nd epoch)",
                "embedding cells/s",
                "input CSR GB",
                "train() peak RSS GB",
                "(peak - model) / CSR",
                "peak RSS GB (train, embed, query)",
            ],
            [[r[0], *[_cell(v, 2) for v in r[1:]]] for r in rows],
        ),
        "",
        f"Scaling (train: `train()` with 2 + 2 epochs and preprocessing; index: building the "
        f"reference's neighbour index, saved with the bundle; search and query: {n_query:,} query cells, "
        "the search alone and `query()` whole, embedding included). The 10M row is extrapolated, not "
        "measured: training linearly, the index and search by the power law through the two largest "
        "sizes.",
        "",
        _table(
            ["reference cells", "train s", "index s", "search s", "query s"],
            [
                [f"{r[0]:,}" if isinstance(r[0], int) else r[0], *[_cell(v, 1) for v in r[1:]]]
                for r in scaling
            ],
        ),
        "",
    ]
    largest = next((r for r in reversed(speed["runs"]) if "error" not in r["train"]), None)
    if largest:
        train = largest["train"]
        bound = 2 * train["input_csr_gb"] + train["model_gb"]
        met = "met" if train["train_peak_rss_gb"] <= bound else "not met"
        if largest["n_cells"] < 1_000_000:
            met = "not measured at that size"
        parts += [
            f"Memory at {largest['n_cells']:,} cells: `train()` peak RSS {train['train_peak_rss_gb']:.2f} GB "
            f"against 2 × the input's CSR ({train['input_csr_gb']:.2f} GB) + the model "
            f"({train['model_gb'] * 1024:.1f} MB) = {bound:.2f} GB: {met} (target at 1M cells).",
            "",
        ]
        query = largest.get("query", {})
        if "query_s" in query:
            full = query["n_query"] >= 100_000 and query["n_reference"] >= 1_000_000
            met = (
                ("met" if query["search_s"] < TARGETS["query_100k_vs_1m_index_s"] else "not met")
                if full
                else ("not measured at that size")
            )
            parts += [
                f"Query: {query['n_query']:,} cells against {query['n_reference']:,} ({query['search']}): "
                f"search {query['search_s']:.1f} s (target < 10 s at 100k against 1M: {met}), `query()` "
                f"whole {query['query_s']:.1f} s.",
                "",
            ]
    parts += throughput_lines(speed["throughput"], speed["runs"])
    return parts


def _power(t0, t1, n0, n1):
    """The exponent of the power law through (n0, t0) and (n1, t1)."""
    if not t0 or not t1 or t0 <= 0 or t1 <= 0:
        return 1.0
    return float(np.log(t1 / t0) / np.log(n1 / n0))


def throughput_lines(throughput, runs, *, heading="### Training throughput against the machine's peak"):
    """The peak, the layer shapes' rates and the breakdown per batch size; the fractions of the peak.
    Where the run also measured CPU seconds (`peak_cpu_gflops`), the same per CPU second of this
    process, and the target is judged on those (wall seconds count the time other work held the
    cores) where `train()`'s rates were measured so, else on wall seconds."""
    if not throughput or "error" in throughput:
        return [f"Throughput breakdown: {throughput.get('error', 'not run')}.", ""]
    peak = throughput["peak_gflops"]
    pre_flops, fine_flops = throughput["pretrain_flops_per_cell"], throughput["finetune_flops_per_cell"]
    layer0 = throughput["pretrain_layer0_flops_per_cell"]
    parts = [
        heading,
        "",
        "Peak: one 4096 × 4096 × 4096 float32 matmul (keras.ops, best of 3, this run): "
        f"**{peak:.1f} GFLOP/s**. "
        f"FLOPs per cell that an epoch needs (matmuls only: forward, and the gradients the step uses): "
        f"pretraining {pre_flops / 1e6:.2f} M (all layers; the first layer alone {layer0 / 1e6:.2f} M), "
        f"fine-tuning {fine_flops / 1e6:.2f} M. Breakdown on {throughput['n_cells']:,} cells: per stage, the "
        "step's matmuls alone, Keras's fit on dense in-memory arrays, and scquery's fit on sparse batches "
        "(what training runs), as cells/s and as a fraction of the peak.",
        "",
    ]
    clocks = [("", peak, "wall seconds")]
    if "peak_cpu_gflops" in throughput:
        clocks.append(("_cpu", throughput["peak_cpu_gflops"], "CPU seconds of this process"))
    verdict = None
    for suffix, clock_peak, clock in clocks:
        if suffix:
            parts += [
                f"The same per CPU second of this process (every thread; `time.process_time`), against "
                f"the peak measured so: **{clock_peak:.1f} GFLOP per CPU second**. On a shared machine "
                "this does not count the time other processes held the cores; it still counts the "
                "input pipeline's own work and any core left idle by it (which a CPU second does not "
                "cover, so a stalled pipeline lowers the wall rate only).",
                "",
            ]
        rows = []
        for row in throughput["batches"]:
            b = row["batch_size"]
            shapes = ", ".join(f"{v:.0f}" for v in row["shape_gflops"])
            for stage, flops in (("pretraining layer 0", layer0), ("fine-tuning", fine_flops)):
                key = "pretrain" if stage.startswith("pre") else "finetune"
                rates = [row[f"{key}_{kind}{suffix}"] for kind in ("matmuls", "in_memory", "sparse")]
                cells = [f"{r:,.0f} ({r * flops / 1e9 / clock_peak:.0%})" for r in rates]
                rows.append([b, shapes if not suffix else "", stage, *cells])
        header = ["batch", "layer shapes GFLOP/s", "stage", "matmuls alone", "Keras, in memory"]
        parts += [_table([*header, "scquery (sparse batches)"], rows), ""]
        fractions = []
        for run in runs:
            train = run["train"]
            if "error" in train or f"pretrain_cells_per_s{suffix}" not in train:
                continue
            fractions.append(
                [
                    f"{run['n_cells']:,}",
                    train[f"pretrain_cells_per_s{suffix}"] * pre_flops / 1e9 / clock_peak,
                    train[f"finetune_cells_per_s{suffix}"] * fine_flops / 1e9 / clock_peak,
                ]
            )
        if not fractions:
            parts += [f"Training at the default settings ({clock}): not measured by this part.", ""]
            continue
        lowest = min(min(p, f) for _, p, f in fractions)
        verdict = ("met" if lowest >= TARGETS["training_fraction_of_peak"] else "not met", clock)
        parts += [
            f"Training at the default settings (`train()`, the 2nd epoch of each stage), as a fraction of "
            f"the peak ({clock}):",
            "",
            _table(["cells", "pretraining", "fine-tuning"], fractions),
            "",
        ]
    met, clock = verdict or ("not measured", clocks[-1][2])
    parts += [
        f"Target ≥ {TARGETS['training_fraction_of_peak']:.0%} of the large-matmul peak for each "
        f"({clock}): {met}.",
        "",
    ]
    return parts


def labels_section(result):
    """Label efficiency: the prediction's macro-F1, the classifier head's and the Unknown share per
    task (in its split), method and label fraction, the plot, the tasks skipped, and the targets per
    split."""
    from .labels import NO_PROPAGATION, NONE, PEERS, PRETRAINED, QUERY

    summary = pd.DataFrame(result["summary"])
    fractions = sorted(summary.fraction.unique())
    runs = summary.groupby("task", sort=False).runs.max()
    parts = [
        "## Label efficiency (few labels, unlabelled cells)",
        "",
        "A stratified fraction of each reference's labels is kept (at least 2 cells per type); the other "
        "reference cells stay in, unlabelled, and the query study's cells are given as unlabelled data "
        "(pretraining only). scquery's score is its prediction (kNN vote + classifier + Unknown rules; "
        "'Unknown' counts as wrong), with its classifier head's score and the share of known query cells "
        "called Unknown beside it; peers are trained on the labelled cells (on both sides' log-normalized "
        "values; a cross-species query on its one-to-one orthologues). Macro-F1 over the query cells of "
        f"the reference's types, mean ± sd over seeds {', '.join(map(str, result['seeds']))}; tasks: "
        f"{result['folds']}. Plot: [labels.png](labels.png).",
        "",
        "![macro-F1 of the prediction against the fraction of labels kept](labels.png)",
        "",
    ]
    verdicts = []
    for (split, task), table in summary.groupby(["split", "task"], sort=False):
        labelled = table.groupby("fraction").n_labelled.mean()
        header = ["method", *(f"{f:.0%}" for f in fractions)]
        rows = []
        for method in table.method.unique():
            cells = {r.fraction: r for r in table[table.method == method].itertuples()}
            rows.append([method, *(_labels_cell(cells.get(f)) for f in fractions)])
        rows.append(["(labelled cells)", *(f"{labelled.get(f, float('nan')):.0f}" for f in fractions)])
        parts += [f"### {task} ({split}, {runs[task]} runs)", "", _table(header, rows), ""]
        by = table.set_index(["method", "fraction"])
        peers = {f: [by.macro_f1[(m, f)] for m in PEERS if (m, f) in by.index] for f in fractions}
        for method in (m for m in PRETRAINED if m in table.method.values):
            checks = {}
            for f in fractions:
                ours = by.loc[(method, f)]
                checks[f] = {
                    "head": ours.macro_f1 - ours.classifier_macro_f1,
                    "unknown": ours.unknown,
                    "none": ours.macro_f1 - by.macro_f1.get((NONE, f), np.nan),
                    "peer": ours.macro_f1 - max(peers[f]) if peers[f] else np.nan,
                    "logistic": ours.macro_f1 - by.macro_f1.get(("logistic regression", f), np.nan),
                    "before": ours.macro_f1 - by.macro_f1.get((NO_PROPAGATION, f), np.nan),
                }
            verdicts.append((split, method, task, checks))
            parts += [
                f"{method}: prediction − classifier head / Unknown share / − no pretraining / − best peer"
                + (" / − without propagated labels: " if method == QUERY else ": ")
                + "; ".join(
                    f"{f:.0%}: {c['head']:+.3f} / {c['unknown']:.1%} / {c['none']:+.3f} / {c['peer']:+.3f}"
                    + (f" / {c['before']:+.3f}" if method == QUERY else "")
                    for f, c in checks.items()
                )
                + ".",
                "",
            ]
    parts += _skipped(result)
    low = [f for f in fractions if f in (0.01, 0.05)]
    targets = [
        ("the prediction ≥ the classifier head − 0.01", lambda c: c["head"] >= -0.01),
        ("known cells called Unknown ≤ 5 %", lambda c: c["unknown"] <= 0.05),
        ("the prediction ≥ no pretraining + 0.03", lambda c: c["none"] >= 0.03),
        ("the prediction not below no pretraining by more than 0.01", lambda c: c["none"] >= -0.01),
        ("the prediction ≥ the best peer + 0.03", lambda c: c["peer"] >= 0.03),
        (
            "the prediction ≥ no pretraining + 0.03 and ≥ logistic regression + 0.03 (target: half)",
            lambda c: c["none"] >= 0.03 and c["logistic"] >= 0.03,
        ),
    ]
    for split, method in dict.fromkeys((split, method) for split, method, _, _ in verdicts):
        chosen = [(task, checks) for s, m, task, checks in verdicts if (s, m) == (split, method)]
        parts += [
            f"Targets at {' and '.join(f'{f:.0%}' for f in low)} labels, {split} pairs, {method}, "
            "per task and fraction:",
            "",
        ]
        for name, holds in targets:
            met = [f"{task} {f:.0%}" for task, checks in chosen for f in low if holds(checks[f])]
            total = len(chosen) * len(low)
            parts.append(
                f"- {name}: met on {len(met)} of {total}" + (f" ({', '.join(met)})." if met else ".")
            )
        parts.append("")
    return parts


def _labels_cell(row):
    """A label-efficiency table cell: the prediction's macro-F1 ± sd, and for scquery the classifier
    head's macro-F1 and the Unknown share."""
    if row is None:
        return "–"
    text = f"{row.macro_f1:.3f} ± {row.macro_f1_sd:.3f}"
    if not np.isnan(row.classifier_macro_f1):
        text += f" (head {row.classifier_macro_f1:.3f}, Unknown {row.unknown:.1%})"
    return text


def pretraining_section(result):
    """Where pretraining pays: per task (in its split), each variant's prediction and head at each label
    fraction, then per split each variant's mean over the tasks and fractions against the defaults and
    against no pretraining."""
    from .pretraining import DEFAULTS, NONE, REFERENCE_ONLY

    summary = pd.DataFrame(result["summary"])
    fractions = sorted(summary.fraction.unique())
    variants = list(result["variants"])
    parts = [
        "## Where pretraining pays (`--only pretraining`)",
        "",
        "The label-efficiency tasks (each reference keeping "
        + " and ".join(f"{f:.0%}" for f in fractions)
        + " of its labels, the same cells per seed as there; the query study's cells given as unlabelled "
        "data for pretraining), scquery pretrained under each variant (the options it changes on top of the "
        "defaults: "
        + "; ".join(
            f"{name}: "
            + (
                "the defaults, `unlabeled` not given"
                if name == REFERENCE_ONLY
                else f"`{json.dumps(options)}`"
            )
            for name, options in result["variants"].items()
        )
        + "). Macro-F1 of the prediction over the query cells of the reference's types ('Unknown' counts "
        f"as wrong), mean ± sd over seeds {', '.join(map(str, result['seeds']))}, with the classifier "
        "head's beside it. The peers on the same tasks and labels are in 'Label efficiency'.",
        "",
    ]
    for (split, task), table in summary.groupby(["split", "task"], sort=False):
        header = ["variant", *(f"{f:.0%}" for f in fractions)]
        rows = []
        for name in variants:
            cells = {r.fraction: r for r in table[table.method == name].itertuples()}
            rows.append([name, *(_labels_cell(cells.get(f)) for f in fractions)])
        parts += [f"### {task} ({split})", "", _table(header, rows), ""]
    parts += _skipped(result)
    for split, part in summary.groupby("split", sort=False):
        parts += _variant_means(part, split, variants, DEFAULTS, NONE)
    return parts


def _skipped(result):
    """A line for each task the part skipped, and for each whose query study was given again at a
    lower gene overlap (`benchmarks.labels.pretrain_on_query`), with why."""
    skipped = [(task, "not run") for task in result.get("skipped", [])]
    lowered = [
        (task, f"its query study read at a gene overlap of {task['overlap']}")
        for task in result.get("lowered", [])
    ]
    return [
        line
        for task, what in skipped + lowered
        for line in (f"- {task['task']} ({task['split']}): {what}: {task['why']}", "")
    ]


def _variant_means(summary, split, variants, defaults, none):
    """Each variant's mean over the `split`'s tasks and fractions, against `defaults` and `none`."""
    mean = summary.groupby("method", sort=False)[["macro_f1", "classifier_macro_f1"]].mean()
    by = summary.set_index(["method", "task", "fraction"])
    parts = [
        f"Each variant over the {len(summary.groupby(['task', 'fraction']))} {split} tasks and fractions:",
        "",
    ]
    for name in variants:
        if name not in mean.index:
            continue
        line = (
            f"- {name}: mean prediction {mean.macro_f1[name]:.3f}, head {mean.classifier_macro_f1[name]:.3f}"
        )
        if name != defaults and defaults in mean.index:
            prediction, head = mean.loc[name] - mean.loc[defaults]
            line += f" ({prediction:+.3f} and {head:+.3f} against the defaults)"
        if name != none and none in mean.index:
            gains = by.macro_f1[name] - by.macro_f1[none]
            line += (
                f"; ≥ +0.03 over no pretraining on {int((gains >= 0.03).sum())} of {len(gains)}, "
                f"more than 0.01 below it on {int((gains < -0.01).sum())}"
            )
        parts.append(line)
    return [*parts, ""]


def labels_figure(result, path):
    """macro-F1 against the label fraction, one panel per task, one line per method (± sd)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = pd.DataFrame(result["summary"])
    tasks, methods = list(summary.task.unique()), list(summary.method.unique())
    splits = dict(zip(summary.task, summary.split, strict=True))
    colors = dict(zip(methods, plt.get_cmap("tab10").colors, strict=False))
    fractions = sorted(summary.fraction.unique())
    columns = min(3, len(tasks))
    rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    legend = {}
    for ax, task in zip(axes.flat, tasks, strict=False):
        for method, table in summary[summary.task == task].groupby("method", sort=False):
            scquery = method.startswith("scquery")
            legend[method] = ax.errorbar(
                table.fraction,
                table.macro_f1,
                yerr=table.macro_f1_sd,
                color=colors[method],
                marker="o" if scquery else ".",
                linestyle="-" if scquery else "--",
                capsize=2,
            )
        ax.set(xscale="log", xlabel="fraction of labels kept", ylabel="macro-F1 (prediction)")
        ax.set_title(f"{task} ({splits[task]})", fontsize="small")
        ax.minorticks_off()
        ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_axis_off()
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=3, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.75 / (3.8 * rows), 1, 1))  # the legend: about 0.75 inch
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scale_section(scale):
    """The neighbour index against its peers at every size, the extrapolation, the targets."""
    rows = [
        [
            r["method"],
            f"{r['n_reference']:,}" + (" (extrapolated)" if r.get("extrapolated") else ""),
            r.get("error") or r.get("setting"),
            r.get("build_s"),
            r.get("leave_self_out_s"),
            r.get("query_s"),
            r.get("recall"),
            r.get("memory_gb"),
        ]
        for r in [*scale["rows"], *scale["extrapolated"]]
    ]
    n_query = next((r["n_query"] for r in scale["rows"] if "n_query" in r), 0)
    parts = [
        "## Neighbour index at scale (simulated embeddings, 100 dimensions)",
        "",
        f"Reference: tanh embeddings of 50 clusters on a 20-dimensional manifold; {n_query:,} queries "
        "from another draw shifted off the reference (another study's cells). Each build runs in its "
        "own process on every core; recall@15 against exact search on 1,000 of the queries; memory: "
        "the process's resident growth over the data. Peers use the least search width of their grid "
        "that reaches recall 0.95 on those queries. scquery's leave-self-out distances (each type's "
        "typical nearest-neighbour distance, which the query's novelty is scaled by) are computed for "
        "up to 2,000 cells per cluster, as `train` does per cell type. 10M rows are extrapolated (a "
        "power law through 100k and 1M), not measured.",
        "",
        _table(
            [
                "method",
                "reference cells",
                "setting",
                "build s",
                "leave-self-out s",
                f"{n_query:,} queries s",
                "recall@15",
                "memory GB",
            ],
            [[*r[:3], *[_cell(v, 2) for v in r[3:]]] for r in rows],
        ),
        "",
    ]
    ours = {r["n_reference"]: r for r in scale["rows"] if r["method"] == "scquery" and "error" not in r}
    million = ours.get(1_000_000)
    if million:
        total = million["build_s"] + million["leave_self_out_s"]
        built = "met" if total < TARGETS["index_1m_s"] else "not met"
        moon = "met" if total < TARGETS["index_1m_moonshot_s"] else "not met"
        recalled = "met" if million["recall"] >= TARGETS["recall"] else "not met"
        queried = "met" if million["query_s"] < TARGETS["query_100k_vs_1m_index_s"] else "not met"
        parts += [
            f"Targets at 1M reference cells: index built (with its leave-self-out distances) in "
            f"{total:.1f} s < {TARGETS['index_1m_s']:.0f} s: {built} (moonshot "
            f"{TARGETS['index_1m_moonshot_s']:.0f} s: {moon}); recall@15 {million['recall']:.3f} ≥ "
            f"{TARGETS['recall']}: {recalled}; {million['n_query']:,} queries searched in "
            f"{million['query_s']:.1f} s < {TARGETS['query_100k_vs_1m_index_s']:.0f} s: {queried}.",
            "",
        ]
    else:
        parts += ["Targets at 1M reference cells: not measured in this run.", ""]
    return parts


def _query_peak(cli, bound):
    """', peak RSS … GB (≤ bound: met)' where the run measured the query's peak memory."""
    peak = cli.get("cli_query_peak_rss_gb")
    return "" if peak is None else f", peak RSS {peak:.2f} GB (≤ {bound:.0f} GB: {_met(peak <= bound)})"


def atlas_section(result):
    """Issue 21's targets: training from disk (peak memory at 100k and 1M cells), the big query
    inside `query()` and through the CLI, data-parallel training on two virtual devices."""
    from .atlas import TARGETS as ATLAS

    n_query, rows = result["query_cells"], []
    for run in result["runs"]:
        train = run["train"]
        if "error" in train:
            rows.append([f"{run['n_cells']:,}", train["error"], *[""] * 6])
            continue
        cli = run.get("cli_query", {})
        rows.append(
            [f"{run['n_cells']:,}"]
            + [
                _cell(v, 2)
                for v in (
                    train["input_csr_gb"],
                    train["train_peak_rss_gb"],
                    train["rss_before_train_gb"],
                    train["pretrain_cells_per_s"],
                    train["finetune_cells_per_s"],
                    train["train_api_s"],
                    cli.get("cli_query_s"),
                )
            ]
        )
    done = {r["n_cells"]: r for r in result["runs"] if "error" not in r["train"]}
    lines = [
        "## Atlas scale: training from disk, big queries, data-parallel training (synthetic counts)",
        "",
        "`train()` reads an h5ad opened with `backed='r'` (options "
        f"{result['options']}; throughput from that first epoch, tracing included); then {n_query:,} query "
        "cells (another draw) against its bundle through `scquery query` in a new process (start-up, "
        "reading and writing included). Each stage in its own process.",
        "",
        _table(
            [
                "reference cells",
                "input CSR GB",
                "train() peak RSS GB",
                "RSS before train() GB",
                "pretraining cells/s",
                "fine-tuning cells/s",
                "train s",
                "CLI query s",
            ],
            rows,
        ),
        "",
    ]
    if 1_000_000 in done and 100_000 in done:
        big, small = done[1_000_000]["train"], done[100_000]["train"]
        peak, growth = big["train_peak_rss_gb"], big["train_peak_rss_gb"] - small["train_peak_rss_gb"]
        cli = done[1_000_000].get("cli_query", {}).get("cli_query_s")
        lines += [
            f"Targets: `train()` from disk at 1M cells peaks at {peak:.2f} GB "
            f"(≤ {ATLAS['train_peak_rss_1m_gb']:.0f} GB: {_met(peak <= ATLAS['train_peak_rss_1m_gb'])}), "
            f"{growth:+.2f} GB over 100k cells (≤ {ATLAS['peak_growth_100k_to_1m_gb']:.0f} GB: "
            f"{_met(growth <= ATLAS['peak_growth_100k_to_1m_gb'])}); its neighbour index (faiss IVF-Flat, "
            f"leave-self-out distances included) built again in {big['index_s']:.1f} s (≤ "
            f"{ATLAS['index_build_1m_s']:.0f} s: {_met(big['index_s'] <= ATLAS['index_build_1m_s'])}); "
            + (
                f"{n_query:,} queries against 1M through the CLI in {cli:.2f} s (≤ "
                f"{ATLAS['cli_query_100k_vs_1m_s']:.0f} s: {_met(cli <= ATLAS['cli_query_100k_vs_1m_s'])})"
                + _query_peak(done[1_000_000]["cli_query"], ATLAS["cli_query_peak_rss_gb"])
                + "."
                if cli
                else "the CLI query did not run."
            ),
            "",
        ]
        accuracy = done[1_000_000].get("search_accuracy")
        if accuracy and "error" not in accuracy:
            recall, same = accuracy["recall_at_k"], accuracy["prediction_agreement"]
            least_recall, least_same = ATLAS["recall_at_15"], ATLAS["prediction_agreement"]
            lines += [
                f"That query's search ({accuracy['search']}) against exact search, on "
                f"{accuracy['n_cells']:,} seeded query cells: recall@{accuracy['k']} {recall:.3f} "
                f"(≥ {least_recall}: {_met(recall >= least_recall)}); the prediction before the Unknown "
                "calls (vote and classifier) the same as with the exact neighbours for "
                f"{100 * same:.2f} % of them (≥ {100 * least_same:.1f} %: {_met(same >= least_same)}).",
                "",
            ]
    else:
        lines += ["Targets at 1M cells: not measured in this run (a smaller run).", ""]
    extend = result.get("extend")
    if extend and "error" not in extend:
        largest = max(done) if done else None
        bound = ATLAS["cli_extend_1m_s"]
        target = (
            f" (target ≤ {bound:.0f} s for 1M cells: {_met(extend['cli_extend_s'] <= bound)})"
            if extend["n_cells"] >= 1_000_000
            else ""
        )
        lines += [
            f"Extending the {largest:,}-cell bundle with {extend['n_cells']:,} new annotated cells (another "
            "draw) through `scquery extend` in a new process (start-up, reading, embedding, the new "
            f"reference's neighbour index and writing the bundle): {extend['cli_extend_s']:.1f} s{target}, "
            f"peak RSS {extend['extend_peak_rss_gb']:.2f} GB.",
            "",
        ]
    elif extend:
        lines += [f"Extending the bundle: {extend['error']}.", ""]
    lines += load_lines(result)
    parallel = [p for p in result.get("parallel", []) if "error" not in p]
    if len(parallel) == 2:
        one, two = parallel
        lines += [
            f"Data-parallel training (JAX, `keras.distribution.DataParallel`), {one['n_cells']:,} cells, "
            "seconds per epoch (the 2nd) on one device and split over two virtual CPU devices of this "
            "machine's cores:",
            "",
            _table(
                ["devices", "pretraining epoch s (all layers)", "fine-tuning epoch s"],
                [
                    [p["devices"], _cell(p["pretrain_epoch_s"], 2), _cell(p["finetune_epoch_s"], 2)]
                    for p in parallel
                ],
            ),
            "",
            "Speed-up with two devices: pretraining "
            f"{one['pretrain_epoch_s'] / two['pretrain_epoch_s']:.2f}×, fine-tuning "
            f"{one['finetune_epoch_s'] / two['finetune_epoch_s']:.2f}×.",
            "",
        ]
    return lines


def _met(condition):
    return "met" if condition else "not met"


def _quality_section(result):
    return quality_section(pd.DataFrame(result["summary"]), result.get("rows", []))


def seeds_section(result):
    """Issue 31's steadiness: per pair and setting, each figure's mean ± sd over the seeds (and its
    range), the seeds' ensemble, the peers; the targets (sd ≤ 0.02; the head ≥ the best peer), for
    the tuning pairs, then the validation pairs."""
    table, peers = pd.DataFrame(result["rows"]), pd.DataFrame(result["peers"])
    if "split" not in table:  # a run from before the cached pairs joined: all development pairs
        table["split"] = "tuning"
    seeds = ", ".join(map(str, result["seeds"]))
    parts = [
        "## Steadiness over seeds (`--only seeds`)",
        "",
        f"Each cross-study pair (every type in the reference) trained with seeds {seeds}: at the "
        "defaults, without pretraining, with the input genes dropped at 0.7 while fine-tuning (the "
        "option `dropout`), with the classifier's weights averaged over 10 epochs (`average_epochs`), and "
        "with a second classifier that drops its input genes at 0.7, the two classifiers' probabilities "
        "averaged (`ensemble_dropout`; the schedule of `benchmarks/methods.py`): the development pairs "
        "and the cached pairs of `benchmarks/PAIRS.md`, in their tuning and validation sets. Macro-F1 over "
        "the query cells of the reference's types, as mean ± standard deviation over the seeds [lowest, "
        "highest]; 'ensemble': the seeds' classifier probabilities averaged (it costs one training per "
        "seed). Peers once (seed 0), in the same run: on the cached pairs PCA + kNN and logistic "
        "regression on log-normalized values (a cross-species query on its one-to-one orthologues). "
        "'query s': the whole query (`scquery.query`, Unknown rules included; a query refused for too "
        "few genes, with its second reading), median over the seeds.",
        "",
    ]
    header = [
        "task",
        "method",
        "classifier head",
        "kNN vote",
        "prediction",
        "ensemble (head)",
        "train s",
        "query s",
    ]
    for split, in_split in table.groupby("split", sort=False):
        rows, verdicts = [], []
        for task, group in in_split.groupby("task", sort=False):
            best = peers[peers.task == task].macro_f1.max() if len(peers) else float("nan")
            for setting, runs in group.groupby("setting", sort=False):
                single = runs[runs.seed != "ensemble"]
                ensemble = runs[runs.seed == "ensemble"]["head"].iloc[0]
                cells = [_spread(single[m]) for m in ("head", "knn", "prediction")]
                seconds = [
                    _cell(single.train_s.mean(), 1),
                    _cell(single.query_s.median(), 1) if "query_s" in single else "–",
                ]
                rows.append([task, setting, *cells, _cell(ensemble), *seconds])
                sd = max(single[m].std(ddof=1) for m in ("head", "prediction"))
                head = single["head"]
                verdicts.append(
                    f"- {task}, {setting}: largest sd {sd:.3f} (≤ 0.02: {_met(sd <= 0.02)}); the head's "
                    f"mean {head.mean():.3f} vs best peer {best:.3f} ({_met(head.mean() >= best)}), at or "
                    f"above it with {int((head >= best).sum())} of {len(single)} seeds"
                )
            for r in peers[peers.task == task].itertuples():
                rows.append([task, r.method, _cell(r.macro_f1), "–", "–", "–", "–", "–"])
        title = "Validation pairs (the set that counts)" if split == "validation" else "Tuning pairs"
        single = in_split[in_split.seed != "ensemble"]
        means = single.groupby(["setting", "task"], sort=False)["head"].mean().groupby("setting", sort=False)
        overall = "; ".join(f"{setting} {values.mean():.3f}" for setting, values in means)
        parts += [f"### {title}", "", _table(header, rows), "", "Targets:", "", *verdicts]
        parts += [
            f"- The head's mean over the {split} pairs, by setting: {overall}.",
            *_query_times(single),
            "",
        ]
        parts += _trailing_types(in_split, peers, result.get("cells", []))
    return parts


def _query_times(single):
    """Each setting's query time against the defaults' (issue 31: within 1.5×): each pair's median
    over the seeds, summed over the pairs, so that one slow call on a sub-second query does not
    decide (none for a run from before query times were kept)."""
    if "query_s" not in single:
        return []
    totals = (
        single.groupby(["setting", "task"], sort=False)["query_s"]
        .median()
        .groupby("setting", sort=False)
        .sum()
    )
    defaults = totals["scquery"]
    return [
        f"- Query time against the defaults', {setting}: {total / defaults:.2f}× ({total:.1f} s against "
        f"{defaults:.1f} s: each pair's median over the seeds, summed; ≤ 1.5×: "
        f"{_met(total <= 1.5 * defaults)})."
        for setting, total in totals.drop("scquery").items()
    ]


def _trailing_types(table, peers, cells):
    """Per type, the head at the defaults (each seed) against the best peer, on the pairs where the
    head's mean trails that peer's macro-F1 (none for a run from before per-type F1 was kept)."""
    counts = {entry["task"]: entry["counts"] for entry in cells}
    single = table[(table.setting == "scquery") & (table.seed != "ensemble")]
    rows = []
    for task, runs in single.groupby("task", sort=False):
        if task not in counts or "head_per_type" not in runs:
            continue
        best = peers[peers.task == task].sort_values("macro_f1").iloc[-1]
        if runs["head"].mean() < best.macro_f1:
            per_seed = pd.DataFrame(list(runs["head_per_type"]))
            rows += _type_gaps(task, per_seed, best.method, best.per_type, counts[task])
    return _trailing_lines(rows, "F1 over the seeds")


def _type_gaps(task, per_seed, peer, peer_per_type, counts):
    """Table rows of each type of `counts` (its query cells): the head's F1 over the seeds (`per_seed`:
    a row per seed, a column per type) against the peer's, and the difference of the means."""
    return [
        [
            task,
            cell_type,
            cells,
            _spread(per_seed[cell_type]),
            f"{peer_per_type[cell_type]:.3f} ({peer})",
            f"{per_seed[cell_type].mean() - peer_per_type[cell_type]:+.3f}",
        ]
        for cell_type, cells in counts.items()
    ]


def _trailing_lines(rows, what):
    if not rows:
        return []
    header = ["task", "type", "query cells", "head (defaults)", "best peer", "head − peer"]
    return [f"Per type, where the head trails the best peer ({what}):", "", _table(header, rows), ""]


def _spread(values):
    """'mean ± sd [lowest, highest]' of one figure over the seeds."""
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f} [{values.min():.3f}, {values.max():.3f}]"


def _over_seeds(seeds, key):
    """`_spread` of `key` over the per-seed scores `seeds` (with the seed count), or None."""
    if not isinstance(seeds, list) or len(seeds) < 2 or seeds[0].get(key) is None:
        return None
    return f"{_spread(np.array([scores[key] for scores in seeds]))} ({len(seeds)} seeds)"


def crossstudy_section(result):
    """Per task: macro-F1 of scquery's prediction and of each peer, the Unknown shares, the targets;
    then the input scales."""
    table = pd.DataFrame(result["tasks"])
    parts = [
        "## Cross-study queries (`--only crossstudy`)",
        "",
        "A reference from one study annotates a query from another (../shared/data). Macro-F1 over the "
        "query cells of the types the reference knows ('Unknown' counts as an error); 'held-out "
        "Unknown': share of the cells of the type removed from the reference called 'Unknown'; 'known "
        "Unknown': share of the other cells called 'Unknown'. Peers have no 'Unknown'. Targets on every "
        "task: scquery's prediction ≥ the best peer's macro-F1; held-out ≥ 90 % Unknown with ≤ 5 % of "
        "known cells Unknown. The table's figures are one seed's (0); scquery's 'over seeds' columns are "
        "the mean ± standard deviation [lowest, highest] over every seed it was trained with (the Unknown "
        "shares: the prediction's, the only answer with Unknown).",
        "",
    ]
    if "seeds" not in table:
        table["seeds"] = None  # a result from before the seeds were run
    rows, verdicts = [], []
    for task, group in table.groupby("task", sort=False):
        ours = group[group.method == "scquery prediction"].iloc[0]
        peers = group[~group.method.str.startswith("scquery")]
        best = peers.macro_f1.max() if len(peers) else float("nan")
        for r in group.itertuples():
            ours_row, prediction_row = r.method.startswith("scquery"), r.method == "scquery prediction"
            rows.append(
                [
                    task,
                    r.method,
                    r.macro_f1,
                    _over_seeds(r.seeds, "macro_f1"),
                    r.known_unknown if ours_row else None,
                    r.held_out_unknown if ours_row else None,
                    _over_seeds(r.seeds, "known_unknown") if prediction_row else None,
                    _over_seeds(r.seeds, "held_out_unknown") if prediction_row else None,
                ]
            )
        f1_met = "met" if ours.macro_f1 >= best - 1e-9 else "not met"
        line = f"- {task}: macro-F1 {ours.macro_f1:.3f} vs best peer {best:.3f} ({f1_met})"
        if isinstance(ours.seeds, list) and len(ours.seeds) > 1:
            mean = np.mean([scores["macro_f1"] for scores in ours.seeds])
            met = "met" if mean >= best - 1e-9 else "not met"
            line += f", over {len(ours.seeds)} seeds {mean:.3f} ({met})"
        if ours.held_out_unknown is not None and not pd.isna(ours.held_out_unknown):
            caught = ours.held_out_unknown >= 0.9 and ours.known_unknown <= 0.05
            line += (
                f"; held-out Unknown {ours.held_out_unknown:.1%}, known Unknown {ours.known_unknown:.1%} "
                f"({'met' if caught else 'not met'})"
            )
        else:
            met = "met" if ours.known_unknown <= 0.05 else "not met"
            line += f"; known Unknown {ours.known_unknown:.1%} ({met})"
        verdicts.append(line)
    header = [
        "task",
        "method",
        "macro-F1",
        "macro-F1 over seeds",
        "known Unknown",
        "held-out Unknown",
        "known Unknown over seeds",
        "held-out Unknown over seeds",
    ]
    parts += [_table(header, rows), ""]
    parts += ["Targets:", "", *verdicts, ""]
    if result.get("subsets"):
        subset_rows = [
            [
                r["task"],
                " + ".join(r["types"]),
                r["cells"],
                r["unknown"],
                r["unknown_in_whole"],
                r["accuracy"],
                r["accuracy_in_whole"],
            ]
            for r in result["subsets"]
        ]
        parts += [
            "The same query cells given as a subset of the query's types (as from a sorted sample), "
            "next to the same cells' figures in the whole query:",
            "",
            _table(
                [
                    "task",
                    "query holds only",
                    "cells",
                    "Unknown",
                    "Unknown in the whole query",
                    "accuracy",
                    "accuracy in the whole query",
                ],
                subset_rows,
            ),
            "",
        ]
    if result.get("scales"):
        scale_rows = []
        for r in result["scales"]:
            if "refused" in r:
                scale_rows.append([r["scale"], "refused: " + r["refused"], None, None])
            else:
                found = r["detected"]
                kind = (
                    ", ".join(f"{k}={v}" for k, v in found.items()) if isinstance(found, dict) else str(found)
                )
                scale_rows.append([r["scale"], kind, r["agreement_with_counts"], r["macro_f1"]])
        parts += [
            "The first Baron query given in other scales (same cells, same model): what was detected, "
            "the share of predictions equal to those from counts, and macro-F1.",
            "",
            _table(["query given as", "detected / refusal", "agreement with counts", "macro-F1"], scale_rows),
            "",
        ]
    return parts


def unknown_section(result):
    """Leave one type out on every pair (median and worst case), conditions on known types, per-type
    F1 of the prediction."""
    held = pd.DataFrame(result["held_out"])
    parts = [
        "## Unknown calls: every type held out, conditions on known types (`--only unknown`)",
        "",
        "Each cross-study pair's types with at least 30 query cells are held out of the reference in turn "
        "(one model each); 'caught': the share of the held-out type's query cells called 'Unknown'; 'known "
        "Unknown': the share of the other cells. Targets: median caught ≥ 90 %, none below 70 %, known "
        "Unknown ≤ 5 % on every task.",
        "",
    ]
    if len(held):
        rows = [
            [
                r.pair,
                r.held_out,
                r.cells,
                r.held_out_unknown,
                r.known_unknown,
                r.macro_f1,
                ", ".join(f"{k} {v}" for k, v in r.called.items()),
            ]
            for r in held.itertuples()
        ]
        parts += [
            _table(
                ["pair", "held out", "cells", "caught", "known Unknown", "macro-F1 (known)", "called"], rows
            ),
            "",
        ]
        median, worst = held.held_out_unknown.median(), held.loc[held.held_out_unknown.idxmin()]
        known_ok = (held.known_unknown <= 0.05).sum()
        parts += [
            f"- Median caught {median:.1%} (target ≥ 90 %: {'met' if median >= 0.9 else 'not met'}); worst "
            f"{worst.held_out_unknown:.1%} ({worst.held_out} of {worst.pair}; target ≥ 70 %: "
            f"{'met' if worst.held_out_unknown >= 0.7 else 'not met'}).",
            f"- Known Unknown ≤ 5 % on {known_ok} of {len(held)} tasks (largest "
            f"{held.known_unknown.max():.1%}).",
            "",
        ]
        if "reconstruction" in held:
            parts += _reconstruction_rows(held)
    conditions = pd.DataFrame(result["conditions"])
    if len(conditions):
        rows = [
            [
                r.pair,
                r.programme,
                r.type,
                f"{r.share:.0%}",
                f"{r.genes_raised} / {r.genes_in_model}",
                r.unknown,
                r.unknown_unperturbed,
                r.accuracy,
                r.accuracy_unperturbed,
                ", ".join(f"{k} {v}" for k, v in getattr(r, "reasons", {}).items()),
            ]
            for r in conditions.itertuples()
        ]
        added = conditions.unknown - conditions.unknown_unperturbed
        drop = conditions.accuracy_unperturbed - conditions.accuracy
        parts += [
            "Conditions: a real programme raised 2-8x (per gene, seeded) in a share of one type's query "
            "cells (genes raised in the query / of them among the model's genes); the same model, and the "
            "same cells' figures in the unperturbed query. Targets: ≤ 2 % of the affected cells called "
            "Unknown, accuracy within 0.02 of the unperturbed query.",
            "",
            _table(
                [
                    "pair",
                    "programme",
                    "type",
                    "cells",
                    "genes",
                    "Unknown",
                    "Unknown unperturbed",
                    "accuracy",
                    "accuracy unperturbed",
                    "why Unknown",
                ],
                rows,
            ),
            "",
            f"- Unknown added by the programme: at most {added.max():.1%} of the affected cells "
            f"({(added <= 0.02).sum()} of {len(added)} rows within 2 %); accuracy lost: at most "
            f"{drop.max():.3f} ({(drop <= 0.02).sum()} of {len(drop)} rows within 0.02).",
            "",
        ]
    per_type = pd.DataFrame(result["per_type"])
    if len(per_type):
        parts += [
            "Per-type F1 of the prediction on each whole pair ('Unknown' counts as an error):",
            "",
            _table(["pair", "type", "query cells", "F1"], per_type[["pair", "type", "cells", "f1"]].values),
            "",
        ]
    if "pairs" in result:
        parts += unknown_pairs_lines(result["pairs"])
    return parts


#: The rejection scores the pairs' tables show, in their order (benchmarks/unknown_pairs.py).
REJECTION = ("scquery", "CellTypist", "scmap-cosine")


def _share(value):
    return "–" if value is None or pd.isna(value) else f"{value:.1%}"


def _with_curves(rows):
    return [r for r in rows if r["new_cells"] and r["rejection"]["scquery"]["auroc"] is not None]


def unknown_pairs_lines(rows):
    """The `pairs` rows of the unknown part (benchmarks/unknown_pairs.py): per split, tuning first, a
    table of its tasks and a summary line of each split's targets."""
    parts = [
        "### The tuning and validation pairs",
        "",
        "Every pair (the shared ones above and the cached ones of benchmarks/PAIRS.md) whole and with each "
        "type of `pairs.HELD_OUT` removed from its reference in turn, one model each, scquery at its "
        "defaults. New cells: of a type the reference lacks (held out, or never in it). 'caught': new "
        "cells called Unknown; 'known Unknown': known cells called Unknown (in brackets, those the "
        "classifier head labels right: the calls that cost an answer, where the others reject a wrong "
        "one); macro-F1 over the known cells, Unknown counted as wrong. AUROC: each method's rejection "
        "score, new against known cells. "
        "scquery's score is its Unknown score `scquery_unknown_score` (how far past its threshold the "
        "cell's furthest score lies, 0.5 at the threshold): its curve is the trade-off as "
        "`--max-unknown-score` moves, every rule stricter or looser at once, its default point "
        "`--max-unknown-score 0.5` (the Unknown calls of the 'caught' and 'known Unknown' columns). "
        "CellTypist's: 1 - its highest probability (default `p_thres` 0.5); scmap-cosine's: "
        "1 - the cosine similarity to the nearest reference centroid over the reference's highly variable "
        "genes (default 0.7); in brackets, the share caught / known Unknown at each default. The pairs' "
        "split was fixed before anything was chosen on them: choose on the tuning set; **the validation "
        "set is the one that counts**.",
        "",
    ]
    if any(_with_curves(rows)):
        parts += [
            "![new cells caught against known cells called Unknown, per task and method](unknown_pairs.png)",
            "",
        ]
    if not rows:
        return parts + [
            "No pair's data was here (`python -m benchmarks.prepare_pairs`, benchmarks/PAIRS.md).",
            "",
        ]
    frame = pd.DataFrame(rows)
    for split in ("tuning", "validation"):
        part = [r for r in rows if r["split"] == split]
        if not part:
            continue
        title = "Tuning set" if split == "tuning" else "Validation set (the one that counts)"
        parts += [f"#### {title}", "", _table(_PAIRS_HEADER, [_pairs_row(r) for r in part]), ""]
        parts += _pairs_summary(frame[frame["split"] == split], split)
        parts += [
            f"- {r['pair']}: refused at the defaults: {r['refused_at_defaults']}"
            for r in part
            if r.get("refused_at_defaults") and not r["held_out"]
        ]
        parts += ["", *_pairs_seeds_lines(part, split)]
    parts += thresholds_lines(rows)
    if not any("CellTypist" in r["rejection"] for r in rows):
        parts += [
            "CellTypist was not run (`SCQUERY_BENCH_CELLTYPIST_PYTHON` unset: `make bench` sets it).",
            "",
        ]
    return parts


def thresholds_lines(rows):
    """Each rule's threshold as the tuning set would choose it, with what it gives on the validation
    set (the rows' `thresholds`, benchmarks/unknown_pairs.py `threshold_sweep`); nothing for rows
    measured without it."""
    from scquery.rules import QueryOptions

    swept = [r for r in rows if r.get("thresholds")]
    if not any(r["split"] == "tuning" for r in swept):  # nothing to choose on
        return []
    figures = {
        split: _sweep_figures([r for r in swept if r["split"] == split]) for split in ("tuning", "validation")
    }
    table = []
    for option, tuning in figures["tuning"].items():
        default = getattr(QueryOptions(), option)
        # The tuning set's choice: most tasks meeting the target, then fewest known cells Unknown, then
        # the value nearest the default.
        choice = min(tuning, key=lambda v: (-tuning[v]["met"], tuning[v]["known"], abs(v - default)))
        for value in dict.fromkeys([default, choice]):
            words = ["default"] * (value == default) + ["the tuning set's choice"] * (value == choice)
            cells = [
                _sweep_cells(figures[split].get(option, {}).get(value)) for split in ("tuning", "validation")
            ]
            table.append([f"`{option}`", f"{value:g} ({', '.join(words)})", *cells[0], *cells[1]])
    header = ["rule (option)", "threshold"] + [
        f"{split}: {what}"
        for split in ("tuning", "validation")
        for what in ("tasks met", "mean caught", "mean known Unknown")
    ]
    return [
        "#### Each rule's threshold, as the tuning set would choose it",
        "",
        "Each Unknown rule's threshold moved alone, the others at their defaults, replayed on the scores "
        "each task's query wrote (the same models, `unknown_pairs.threshold_sweep`). 'tasks met': tasks "
        "with new cells that catch ≥ 80 % of them with ≤ 5 % of known cells Unknown; mean caught over "
        "those tasks, mean known Unknown over every task of the set. The tuning set's choice: the most "
        "tasks met, then the fewest known cells Unknown, then the value nearest the default; the "
        "validation columns show what it would give there.",
        "",
        _table(header, table),
        "",
    ]


def _sweep_cells(at):
    if at is None:
        return ["–"] * 3
    return [f"{at['met']} of {at['tasks']}", _share(at["caught"]), _share(at["known"])]


def _sweep_figures(rows):
    """Per option and threshold: the tasks with new cells meeting the target and their count, the mean
    caught over them and the mean known Unknown over every row."""
    points = {}
    for row in rows:
        for option, sweep in row["thresholds"].items():
            for point in sweep:
                points.setdefault(option, {}).setdefault(point["value"], []).append(point)
    figures = {}
    for option, values in points.items():
        figures[option] = {}
        for value, at in values.items():
            new = [p for p in at if p["caught"] is not None]
            figures[option][value] = {
                "met": sum(_pair_targets_met(p["caught"], p["known_unknown"]) for p in new),
                "tasks": len(new),
                "caught": np.mean([p["caught"] for p in new]) if new else None,
                "known": np.mean([p["known_unknown"] for p in at if p["known_unknown"] is not None]),
            }
    return figures


_PAIRS_HEADER = [
    "pair",
    "held out",
    "new cells (types the reference lacks)",
    "prediction",
    "head",
    "best peer",
    "caught",
    "known Unknown",
    *[f"AUROC {name}" for name in REJECTION],
    "known Unknown by condition",
]


def _auroc_cell(curve):
    if curve is None or curve["auroc"] is None:
        return "–"
    at = curve["default"]
    return f"{curve['auroc']:.3f} ({_share(at['caught'])} / {_share(at['known_unknown'])})"


def _pairs_row(r):
    found = {name: f1 for name, f1 in r["peer_f1"].items() if f1 is not None}
    best = max(found, key=found.get) if found else None
    new_types = [*r["held_out"], *r["novel"]]
    return [
        r["pair"],
        " + ".join(r["held_out"]) or "–",
        f"{r['new_cells']} ({', '.join(new_types)})" if r["new_cells"] else "0",
        r["prediction_f1"],
        r["classifier_f1"],
        f"{found[best]:.3f} ({best})" if best else "–",
        _share(r["caught"]),
        _known_unknown_cell(r),
        *[_auroc_cell(r["rejection"].get(name)) for name in REJECTION],
        ", ".join(f"{level} {_share(share)}" for level, share in (r.get("conditions") or {}).items()) or "–",
    ]


def _known_unknown_cell(r):
    """The known cells called Unknown, and in brackets those the classifier head labels right."""
    right = r.get("known_unknown_head_right")
    cell = _share(r["known_unknown"])
    return cell if right is None else f"{cell} ({_share(right)} head right)"


def _pairs_summary(part, split):
    """One split's summary: median AUROC, mean caught and known Unknown, the tasks meeting the targets."""
    new = part[part["new_cells"] > 0]
    aurocs = {
        name: part["rejection"].map(lambda r, name=name: (r.get(name) or {}).get("auroc")).dropna()
        for name in REJECTION
    }
    median = ", ".join(
        f"{name} {values.median():.3f} ({_tasks(len(values))})"
        for name, values in aurocs.items()
        if len(values)
    )
    known = part["known_unknown"].dropna()
    met = _pair_targets_met(new["caught"], new["known_unknown"]).sum()
    whole = part[part["held_out"].map(len) == 0]
    best = whole["peer_f1"].map(lambda f1: max([v for v in f1.values() if v is not None], default=np.nan))
    caught = _share(new["caught"].mean() if len(new) else None)
    known = _share(known.mean() if len(known) else None)
    if "known_unknown_head_right" in part and part["known_unknown_head_right"].notna().any():
        known += f" ({_share(part['known_unknown_head_right'].mean())} of cells the head labels right)"
    head_ok = (whole["prediction_f1"] >= whole["classifier_f1"] - 0.01).sum()
    lines = [
        f"- {split.capitalize()}, {_tasks(len(part))}: median AUROC {median or '–'}; mean caught {caught} "
        f"over the {_tasks(len(new))} with new cells; mean known Unknown {known}; "
        f"{met} of {_tasks(len(new))} with new cells catch ≥ 80 % with ≤ 5 % of known cells Unknown (target: "
        "all; median AUROC ≥ 0.95).",
    ]
    if len(whole):
        lines.append(
            f"- Whole pairs: prediction ≥ head - 0.01 on {head_ok} of {len(whole)}; ≥ the best peer on "
            f"{(whole['prediction_f1'] >= best).sum()} of {len(whole)}."
        )
    return lines


#: The figures of each seed (`seeds` of a pairs row), with their column titles.
_SEED_FIGURES = {
    "prediction_f1": "prediction",
    "classifier_f1": "head",
    "caught": "caught",
    "known_unknown": "known Unknown",
    "auroc": "AUROC scquery",
}


def _pairs_seeds_lines(part, split):
    """One split's figures over the seeds: per task each figure's `_spread`, then per seed the set's
    summary (median AUROC, mean caught and known Unknown, tasks meeting both targets); nothing for rows
    measured with one seed."""
    part = [r for r in part if len(r.get("seeds") or []) > 1]
    if not part:
        return []

    def cell(r, key):
        values = [scores[key] for scores in r["seeds"] if scores[key] is not None]
        return _spread(np.array(values)) if values else "–"

    rows = [[r["pair"], " + ".join(r["held_out"]) or "–", *(cell(r, k) for k in _SEED_FIGURES)] for r in part]
    n_seeds = min(len(r["seeds"]) for r in part)
    aurocs, caught, known, met = [], [], [], []
    for k in range(n_seeds):
        seed = pd.DataFrame([r["seeds"][k] for r in part]).apply(pd.to_numeric)
        new = seed[seed["caught"].notna()]
        aurocs.append(f"{seed['auroc'].median():.3f}")
        caught.append(_share(new["caught"].mean()))
        known.append(_share(seed["known_unknown"].mean()))
        met.append(f"{_pair_targets_met(new['caught'], new['known_unknown']).sum()} of {len(new)}")
    return [
        f"{split.capitalize()} set over {n_seeds} seeds (one model per task and seed; mean ± sd [lowest, "
        "highest], shares as fractions):",
        "",
        _table(["pair", "held out", *_SEED_FIGURES.values()], rows),
        "",
        f"- Seed by seed: median AUROC scquery {' / '.join(aurocs)}; mean caught {' / '.join(caught)}; "
        f"mean known Unknown {' / '.join(known)}; tasks with new cells that catch ≥ 80 % with ≤ 5 % of "
        f"known cells Unknown {' / '.join(met)}.",
        "",
    ]


def _pair_targets_met(caught, known_unknown):
    """Issue 30's targets for a task with new cells: ≥ 80 % of them caught, ≤ 5 % of known cells
    Unknown (numbers or Series, element by element)."""
    return (caught >= 0.8) & (known_unknown <= 0.05)


def _tasks(count):
    return f"{count} task" + ("" if count == 1 else "s")


def unknown_pairs_figure(result, path):
    """Per task of the unknown part's `pairs` with new and known cells: each method's share of new cells
    caught against its share of known cells called Unknown as its threshold moves, the default marked."""
    rows = _with_curves(result.get("pairs") or [])
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(REJECTION, plt.get_cmap("tab10").colors, strict=False))
    columns = min(5, len(rows))
    grid = -(-len(rows) // columns)
    fig, axes = plt.subplots(grid, columns, figsize=(3.2 * columns, 3.2 * grid + 0.4), squeeze=False)
    legend = {}
    for ax, r in zip(axes.flat, rows, strict=False):
        for name, curve in r["rejection"].items():
            points = curve["curve"]  # in the order of the threshold
            known, caught = [p["known_unknown"] for p in points], [p["caught"] for p in points]
            color = colors.get(name, "grey")
            legend[name] = ax.plot(known, caught, color=color, lw=1.2)[0]
            ax.plot(curve["default"]["known_unknown"], curve["default"]["caught"], "o", color=color)
        held = " + ".join(r["held_out"]) + " held out" if r["held_out"] else "whole"
        title = textwrap.wrap(f"{r['split']}: {r['pair']}", 44)  # whole, not cut
        ax.set_title("\n".join([*title, held]), fontsize=7)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.tick_params(labelsize=6)
        ax.set_xlabel("known cells Unknown", fontsize=7)
        ax.set_ylabel("new cells caught", fontsize=7)
    for ax in list(axes.flat)[len(rows) :]:
        ax.set_axis_off()
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), frameon=False)
    fig.tight_layout(rect=(0, 0.4 / (3.2 * grid + 0.4) + 0.02, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def species_section(result):
    """Per simulation and way of mapping: the overlaps, the agreement with the same-species query and
    macro-F1; then CellTypist's `Model.convert` on the same simulation."""
    parts = [
        "## Another species, simulated (`--only species`)",
        "",
        "No human–mouse pair of one tissue is in ../shared/data, so the human query of each cross-study "
        "pair is renamed to mouse genes with the built-in orthologues (Ensembl 105, via CellTypist) and "
        "given to the model trained on the human reference: '1:1 only' leaves out the genes without a "
        "one-to-one orthologue (queried with `species='mouse'` and with the same pairs as "
        "`gene_map=FILE`); 'with paralogues' (Baron, counts) splits a human gene's counts at random among "
        "its mouse orthologues and sums the human genes of one mouse gene, then maps back with each way of "
        "combining several query genes of one reference gene (`collapse`); \"species='mouse', missing genes "
        'rebuilt": the same model (trained with `rebuild_missing`, which changes no training) with the '
        "genes "
        "the query lacks rebuilt from those it holds by its autoencoder, not read at their mean over the "
        "reference's types. 'Agreement': the share of "
        "cells whose prediction equals the same-species (human) query's, Unknown included; target "
        f"≥ {result.get('target', 0.98)}; 'agreement, same genes': with the human query given only the "
        "genes the simulated mouse query holds (what the mapping itself must reproduce; the rest of the "
        "gap is the genes without a one-to-one orthologue). Overlap: the share of the model's genes the "
        "query holds, by its own names matched regardless of case as every query is (before), and after "
        "mapping.",
        "",
    ]
    rows = [
        [
            r["task"],
            r["simulation"],
            r["way"],
            r["overlap_before"],
            r["overlap_after"],
            r["agreement"],
            r.get("agreement_same_genes"),
            r["macro_f1"],
        ]
        for r in result["rows"]
    ]
    headers = [
        "task",
        "simulation",
        "way",
        "overlap before",
        "overlap after",
        "agreement",
        "agreement, same genes",
        "macro-F1",
    ]
    parts += [_table(headers, rows), ""]
    verdicts = []
    for r in result["rows"]:
        if r["simulation"] == "1:1 only":
            met = "met" if r["agreement"] >= result.get("target", 0.98) else "not met"
            verdicts.append(
                f"- {r['task']}, {r['way']}: agreement {r['agreement']:.4f} ({met}); with the human "
                f"query on the same genes {r['agreement_same_genes']:.4f}"
            )
    parts += ["Targets:", "", *verdicts, ""]
    parts += real_species_lines(result.get("real", []))
    if result.get("celltypist"):
        ct_rows = [
            [r["task"], r["agreement"], r["macro_f1_human"], r["macro_f1_converted"]]
            for r in result["celltypist"]
        ]
        parts += [
            "CellTypist 1.7.1 on the '1:1 only' simulation: its model trained on the human reference, "
            "converted by `Model.convert()` (its default: one-to-one orthologues only), and its agreement "
            "with its own predictions on the human query:",
            "",
            _table(["task", "agreement", "macro-F1 (human query)", "macro-F1 (converted)"], ct_rows),
            "",
        ]
    return parts


def real_species_lines(rows):
    """The cached pairs whose query is of another species: the head and the prediction over the seeds
    (mean ± sd), the query's missing genes at their mean over the reference's types and rebuilt."""
    if not rows:
        return []
    table = pd.DataFrame(rows)
    lines = []
    for (task, split), runs in table.groupby(["task", "split"], sort=False):
        cells = [task, split, f"{runs.overlap.iloc[0]:.3f}"]
        for name in ("classifier", "prediction"):
            for genes in ("mean", "rebuilt"):
                values = runs[runs["missing genes"] == genes][name]
                cells.append(f"{values.mean():.3f} ± {values.std(ddof=1):.3f}")
        lines.append(cells)
    seeds = table.seed.nunique()
    headers = [
        "pair",
        "split",
        "model's genes the query holds",
        "head, genes at their mean",
        "head, genes rebuilt",
        "prediction, genes at their mean",
        "prediction, genes rebuilt",
    ]
    return [
        f"The real mouse queries of the pair cache (`benchmarks/PAIRS.md`; {seeds} seeds, one model each, "
        "trained with `rebuild_missing`): macro-F1 over the query cells of the reference's types, mean ± "
        "standard deviation over the seeds, with the genes the query lacks read at their mean over the "
        "reference's types (the default) and rebuilt by the model's autoencoder:",
        "",
        _table(headers, lines),
        "",
    ]


def throughput_section(result):
    """The throughput part: the breakdown and `train()` on the same cells, in one process, against the
    peak measured before them and after."""
    heading = "## Training throughput against the machine's peak (`--only throughput`)"
    if "error" in result:
        return [heading, "", f"Not measured: {result['error']}.", ""]
    runs = [{"n_cells": result["n_cells"], "train": result["train"]}] if "train" in result else []
    lines = throughput_lines(result, runs, heading=heading)
    if "peak_after_gflops" in result:
        after = f"{result['peak_after_gflops']:.1f} GFLOP/s (before: {result['peak_gflops']:.1f})"
        if "peak_after_cpu_gflops" in result:
            after += (
                f"; per CPU second {result['peak_after_cpu_gflops']:.1f} (before: "
                f"{result['peak_cpu_gflops']:.1f})"
            )
        lines += [f"The peak measured again after `train()`, in the same process: {after}.", ""]
    return lines + load_lines(result)


def gpu_section(result):
    """The GPU part: the device and its peak, each stage's epoch throughput per precision and batch
    size with where a step's time goes, `train()` end to end, and the targets of issue 32."""
    from scquery.logs import arrows

    from .gpu import TARGETS as GPU

    heading = "## Training on a GPU (`--only gpu`)"
    if "error" in result:
        return [heading, "", f"Not measured: {result['error']}.", ""]
    probe, data = result["probe"], result["data"]
    memory = (probe.get("memory") or {}).get("limit")
    lines = [heading, ""]
    if not result["gpu"]:
        lines += [
            f"**No GPU present**: the device was {probe['device']}, so the part ran on the CPU at the quick "
            f"size ({result['n_cells']:,} cells). These are not GPU figures; the targets are not measured.",
            "",
        ]
    lines += [
        f"Device: **{probe['device']}** ({probe['devices']} device(s) seen by JAX {probe['jax']}"
        + (f", {memory / 1e9:.0f} GB" if memory else "")
        + f"; Keras {probe['keras']}, JAX backend). Peak of one {probe['matmul_n']:,}² × "
        f"{probe['matmul_n']:,} `keras.ops.matmul` (best of 3, this run): bfloat16 "
        f"**{_flops(probe['peak_bfloat16_tflops'])}**, float32 **{_flops(probe['peak_float32_tflops'])}** "
        "(JAX's default precision, which lets XLA use TF32 on a GPU's tensor cores).",
        "",
    ]
    if "error" in data:
        return lines + [f"Data: {data['error']}.", ""]
    lines += [
        f"Data: synthetic counts made on the host, {data['n_cells']:,} cells × {data['n_genes']:,} genes, "
        f"{data['values_per_cell']:.0f} values a cell (CSR {data['csr_gb']:.2f} GB), drawn in "
        f"{data['generate_s']:.1f} s by {data['threads']} threads, the h5ad written in "
        f"{data['write_h5ad_s']:.1f} s. Network {arrows([data['n_genes'], *result['hidden_sizes']])}"
        f" (→ 10 types for fine-tuning). Per epoch (the 2nd): pretraining every greedy layer "
        "(`pretrain_greedy`), fine-tuning (`fit_classifier`, no validation split); input 'device': the "
        "training matrix held on the device and each batch densified there (`device_rows`), 'host': "
        "batches densified on the host (`SparseBatches`). Share of the peak: the epoch's matmul FLOPs "
        "against the peak of its precision. A step's time, of the first pretraining layer and of the "
        "classifier: in the epoch (`fit`), the input pipeline alone (a batch made on the host and "
        "copied), the compiled step dispatched once per step from Python, and steps looped on the "
        "device in one compiled call (the step's own time).",
        "",
    ]
    rows, best = [], {}
    for fit in result["fits"]:
        if "error" in fit:
            rows.append(["", "", "", "", fit["error"], *[""] * 7])
            continue
        stage = fit["stage"]
        flops = fit[f"{stage}_flops_per_cell"]
        peak = probe[
            "peak_bfloat16_tflops" if fit["precision"] == "mixed_bfloat16" else "peak_float32_tflops"
        ]
        peak_memory = (fit.get("memory") or {}).get("peak")
        for run in fit["runs"]:
            rate = run["cells_per_s"]
            if fit["pipeline"] == "device":
                best[stage] = max(
                    best.get(stage, (0, None, None)), (rate, run["batch_size"], fit["precision"])
                )
            rows.append(
                [
                    "pretraining" if stage == "pretrain" else "fine-tuning",
                    fit["precision"],
                    fit["pipeline"],
                    run["batch_size"],
                    f"{rate:,.0f}",
                    f"{rate * flops / (peak * 1e12):.1%}",
                    _cell(None if peak_memory is None else peak_memory / 1e9, 2),
                    f"{run.get('layer_s', [run['epoch_s']])[0] / run['steps'] * 1e6:,.0f}",
                    *(
                        f"{run[key]:,.0f}" if key in run else "–"
                        for key in ("input_us", "dispatch_us", "device_us")
                    ),
                ]
            )
    header = ["stage", "precision", "input", "batch", "cells/s", "share of peak", "peak memory GB"]
    header += ["epoch µs/step", "input µs/step", "step per dispatch µs", "step on device µs"]
    lines += [_table(header, rows), ""]
    measured = result["gpu"]
    for stage, name in (("pretrain", "Pretraining"), ("finetune", "Fine-tuning")):
        target = GPU[f"{stage}_cells_per_s"]
        if stage in best:
            rate, batch, precision = best[stage]
            verdict = _met(rate >= target) if measured else "not measured (no GPU)"
            best_run = f"best {rate:,.0f} (batch {batch}, {precision})"
            lines.append(f"- {name} ≥ {target / 1e6:.0f}M cells/s: {best_run}: {verdict}.")
    rates = {
        (fit["stage"], fit["precision"], fit["pipeline"], run["batch_size"]): run["cells_per_s"]
        for fit in result["fits"]
        if "error" not in fit
        for run in fit["runs"]
    }
    for stage, name in (("pretrain", "pretraining"), ("finetune", "fine-tuning")):
        ratios = [
            f"{rates[stage, 'mixed_bfloat16', 'device', b] / rate:.2f}× at batch {b}"
            for (s, precision, pipeline, b), rate in rates.items()
            if (s, precision, pipeline) == (stage, "float32", "device")
            and (stage, "mixed_bfloat16", "device", b) in rates
        ]
        host = [
            f"{rates[stage, 'float32', 'device', b] / rate:.2f}× at batch {b}"
            for (s, precision, pipeline, b), rate in rates.items()
            if (s, pipeline) == (stage, "host") and (stage, "float32", "device", b) in rates
        ]
        lines.append(
            f"- Mixed precision's speed-up in {name} (cells/s against float32): {', '.join(ratios) or '–'}; "
            f"the data held on the device against batches densified on the host: {', '.join(host) or '–'}."
        )
    train = result.get("train", {})
    if "error" in train or not train:
        lines.append(f"- `train()` end to end: {train.get('error', 'not run')}.")
    else:
        verdict = _met(train["train_s"] <= GPU["train_s"]) if measured else "not measured (no GPU)"
        held = "held on the device" if train["device_budget_gb"] else "densified on the host"
        options = "the quick" if result["quick"] else "the default"
        epochs = sum(train["pretrain_epoch_s"]) + sum(train["finetune_epoch_s"])
        rest = train["train_s"] - train["read_s"] - epochs
        lines.append(
            f"- `train()` end to end on {train['n_cells']:,} cells from the h5ad on disk (reading, "
            f"{train['read_s']:.1f} s, included), {options} options: "
            f"**{train['train_s']:.1f} s** (≤ {GPU['train_s']:.0f} s: {verdict}); pretraining epochs "
            + ", ".join(f"{s:.1f}" for s in train["pretrain_epoch_s"])
            + " s; fine-tuning epochs "
            + ", ".join(f"{s:.1f}" for s in train["finetune_epoch_s"])
            + " s; the rest (preprocessing, building the models, embedding the reference, its index) "
            + f"{rest:.1f} s; the data {held}."
        )
    lines += ["", f"The part took {result['seconds']:.0f} s.", ""]
    return lines + load_lines(result)


def precision_section(result):
    """Mixed precision against float32 on the quality splits: per task and answer, the mean accuracy
    and macro-F1 of each precision and their change, beside the change of float32 with the next seed;
    the target on the quality part's two answers."""
    from .precision import HEADS, JUDGED

    table = pd.DataFrame(result["rows"])
    runs = {run: part.set_index(["task", "fold"]) for run, part in table.groupby("run")}
    full, mixed, reseeded = runs["float32"], runs["mixed_bfloat16"], runs["float32, next seed"]
    rows, changes = [], []
    for task in dict.fromkeys(full.index.get_level_values("task")):
        a, b, c = full.loc[task], mixed.loc[task], reseeded.loc[task]
        for head, name in HEADS.items():
            accuracy, f1 = f"{head}_accuracy", f"{head}_macro_f1"
            change = float(b[accuracy].mean() - a[accuracy].mean())
            rows.append(
                [
                    task,
                    name,
                    a[accuracy].mean(),
                    b[accuracy].mean(),
                    f"{change:+.4f}",
                    f"{c[accuracy].mean() - a[accuracy].mean():+.4f}",
                    a[f1].mean(),
                    b[f1].mean(),
                    f"{b[f1].mean() - a[f1].mean():+.4f}",
                    f"{c[f1].mean() - a[f1].mean():+.4f}",
                    len(a),
                ]
            )
            if head in JUDGED:
                changes.append((abs(change), change, task, name))
    largest = max(changes)
    limit = result["max_change"]
    seconds = table.groupby("run")["seconds"].sum().round().astype(int).to_dict()
    return [
        "## Mixed precision (`--only precision`)",
        "",
        "scquery trained on every split of the quality part in float32 and in mixed precision (the "
        "training option `mixed_precision`: Keras's `mixed_bfloat16`), all else equal (seed "
        f"{result['seed']}), and in float32 with the next seed as a yardstick ('next seed': the change "
        "another seed alone makes); means over each task's folds. The prediction (the kNN vote and the "
        "classifier combined, with Unknown) is shown too; the quality part scores the other two. Its "
        "speed is measured on a GPU (the gpu part).",
        "",
        _table(
            [
                "task",
                "answer",
                "accuracy float32",
                "accuracy mixed",
                "change",
                "next seed",
                "macro-F1 float32",
                "macro-F1 mixed",
                "change",
                "next seed",
                "folds",
            ],
            rows,
        ),
        "",
        f"Target: mixed precision changes each task's mean accuracy (kNN vote, classifier) by ≤ {limit}: "
        f"the largest change is {largest[1]:+.4f} ({largest[2]}, {largest[3]}), {_met(largest[0] <= limit)}. "
        f"Training and querying took {seconds['float32']} s in float32 and {seconds['mixed_bfloat16']} s in "
        "mixed precision on the run's machine.",
        "",
    ]


def load_lines(result):
    """The machine's load average (1 minute) at the start and end of a run that recorded it, and
    what it means for the times: above the core count, other processes shared the cores."""
    load = result.get("load_average")
    if not load:
        return []
    cores = os.cpu_count() or 1
    shared = (
        f"above this machine's {cores} cores: the run shared them with other processes (another agent's "
        "benchmarks), and its times and rates are of the share it got"
        if max(load) > cores
        else f"within this machine's {cores} cores"
    )
    return [f"Load average at the start and end of the run: {load[0]:.1f}, {load[1]:.1f}; {shared}.", ""]


#: How each part of results.json is written into RESULTS.md (parts not listed are left out).
SECTIONS = {
    "quality": _quality_section,
    "precision": precision_section,
    "crossstudy": crossstudy_section,
    "unknown": unknown_section,
    "seeds": seeds_section,
    "labels": labels_section,
    "pretraining": pretraining_section,
    "species": species_section,
    "speed": speed_section,
    "scale": scale_section,
    "atlas": atlas_section,
    "throughput": throughput_section,
    "gpu": gpu_section,
}
#: Figures drawn into the output folder when a part runs: name → (function(result, path), file name).
FIGURES = {"labels": (labels_figure, "labels.png"), "unknown": (unknown_pairs_figure, "unknown_pairs.png")}


def write_report(out_dir, *, command, results, order, commit=None):
    """Store `results` (part name → figures) in `out_dir`/results.json, keeping the figures of
    other parts already there, and write RESULTS.md from every stored part; returns its path.

    Each part keeps the command, date, machine and git `commit` (default: the current one) of the run
    that produced it.
    """
    stored = _read_stored(out_dir / "results.json")
    info = {**machine(), "commit": commit or current_commit()}
    for name, result in results.items():
        stored[name] = {"command": command, "machine": info, "result": result}
        if name in FIGURES:
            draw, filename = FIGURES[name]
            draw(result, out_dir / filename)
    (out_dir / "results.json").write_text(json.dumps(stored, indent=1, default=_plain))
    parts = [
        "# scquery benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks`); each section names the command, date, git "
        "commit and machine of the run that produced it (`python -m benchmarks --only PART` reruns one "
        "part).",
        "",
    ]
    for name in [*order, *sorted(set(stored) - set(order))]:
        if name not in stored or name not in SECTIONS:
            continue
        entry = stored[name]
        info = entry["machine"]
        parts += SECTIONS[name](entry["result"])
        parts += [
            f"<sub>Command: `{entry['command']}`; {info['date']}; "
            f"commit {info.get('commit', 'not recorded')}; {info['platform']}, {info['cpu']}, "
            f"{info['cores']} cores, Python {info['python']}; GPU: {info['gpu']}; "
            + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
            + "</sub>",
            "",
        ]
    path = out_dir / "RESULTS.md"
    path.write_text("\n".join(parts))
    return path


def _read_stored(path):
    """The parts stored in results.json (none when it is absent or of the old single-run form)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in stored.items() if isinstance(v, dict) and "result" in v}


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value)} is not JSON serializable")


def _reconstruction_rows(held):
    """The reconstruction-error signal on each held-out task (`benchmarks/reconstruction.py`)."""
    kinds = ("query", "per type")
    rows = [
        [r.pair, r.held_out]
        + [
            value
            for kind in kinds
            for value in (
                r.reconstruction[f"{kind} AUROC"],
                r.reconstruction[f"{kind} held-out clusters"],
                r.reconstruction[f"{kind} highest known cluster"],
                r.reconstruction[f"{kind} caught above known"],
            )
        ]
        for r in held.itertuples()
    ]
    found = pd.DataFrame([r.reconstruction for r in held.itertuples()])
    lines = []
    for kind in kinds:
        known = found[f"{kind} highest known cluster"].max()
        caught = (found[f"{kind} held-out clusters"] > known).sum()
        lines.append(
            f"- {kind}: the highest known cluster of all tasks scores {known:.2f}; {caught} of {len(found)} "
            "held-out types score above it (the most one threshold catches without rejecting a known "
            "cluster somewhere)."
        )
    return [
        "Reconstruction error as a signal (measured, not used by the query): the first pretraining "
        "stage's autoencoder rebuilds each query cell; its shortfall on the predicted type's own genes "
        "(the mean positive residual), as a log ratio to the query's median cell ('query'), or first "
        "divided by the reference's own shortfall for that type ('per type'). Per cell, AUROC of "
        "held-out against known cells; per query cluster (its cells' median): the held-out type's cells' "
        "median, the highest known cluster, and the share of held-out cells above it.",
        "",
        _table(
            ["pair", "held out"]
            + [
                f"{kind}: {what}"
                for kind in kinds
                for what in ("AUROC", "held-out", "highest known", "caught above known")
            ],
            rows,
        ),
        "",
        *lines,
        "",
    ]
