"""The neighbour index at scale: scquery's choice (faiss IVF-Flat) against its peers (hnswlib,
faiss HNSW, faiss IVF-SQ8 with exact re-ranking, pynndescent) on the same simulated embeddings, each
build in its own process.

Measured at 100,000 and 1,000,000 reference cells (100,000 queries from a shifted draw: another
study's cells); 10,000,000 is extrapolated from the growth between the two, and stated as such.
"""

import math

from .speed import run_stage

FULL_SIZES, QUICK_SIZES = [100_000, 1_000_000], [30_000]
FULL_QUERY, QUICK_QUERY = 100_000, 2_000
METHODS = ["scquery", "hnswlib", "faiss-hnsw", "faiss-ivf-sq8", "pynndescent"]
#: pynndescent's first build compiles its numba code for minutes: left out of the smoke run.
QUICK_METHODS = ["scquery", "hnswlib", "faiss-hnsw", "faiss-ivf-sq8"]
EXTRAPOLATED = 10_000_000
#: A peer slower than this at one size is not run at the next.
STAGE_TIMEOUT_S = 1200


def run_scale(*, quick, log=print):
    """Every method at every size: build, leave-self-out and query seconds, recall@15, memory."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    n_query = QUICK_QUERY if quick else FULL_QUERY
    rows = []
    for method in QUICK_METHODS if quick else METHODS:
        for n_reference in sizes:
            log(f"scale: {method}, {n_reference} reference cells, {n_query} queries")
            row = run_stage(
                "index", log, timeout=STAGE_TIMEOUT_S, method=method, n_reference=n_reference, n_query=n_query
            )
            rows.append({"method": method, "n_reference": n_reference, **row})
            if "error" in row or row["build_s"] * 10 > STAGE_TIMEOUT_S:
                break  # too slow for the next size (builds grow at least tenfold)
    return {"rows": rows, "extrapolated": extrapolate(rows, EXTRAPOLATED)}


def extrapolate(rows, n_reference):
    """Each method's figures at `n_reference` cells from its two largest measured sizes: a time t
    grows as a power law fitted through them, t(n) = t1 (n / n1) ** (log(t1 / t0) / log(n1 / n0));
    memory in proportion to the cells."""
    out = []
    for method in METHODS:
        done = [r for r in rows if r["method"] == method and "error" not in r]
        done.sort(key=lambda r: r["n_reference"])
        if len(done) < 2:
            continue
        small, large = done[-2], done[-1]
        ratio = large["n_reference"] / small["n_reference"]
        row = {"method": method, "n_reference": n_reference, "extrapolated": True}
        for key in ("build_s", "leave_self_out_s", "query_s"):
            if key in large and small.get(key, 0) > 0:
                exponent = math.log(large[key] / small[key]) / math.log(ratio)
                row[key] = large[key] * (n_reference / large["n_reference"]) ** exponent
        row["memory_gb"] = large["memory_gb"] * n_reference / large["n_reference"]
        out.append(row)
    return out
