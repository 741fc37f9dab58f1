"""Same seeds, same answers, before and after a change of the code: train and query the cross-study pairs
of ../shared/data with the code of two revisions, each in its own process, and compare every output.

    python -m benchmarks.same_answers BEFORE [AFTER]   # revisions; AFTER: the working tree

Each side is the package's source of that revision (`git archive`), imported in a fresh process that
trains a small model with seed 0 and queries it through the public API (`train`, `query`, `embed`):
CEL-seq2 → Drop-seq (one cell line held out of the reference, so that Unknown calls happen) and
pbmc3k's counts → pbmc68k_reduced's `.raw`. It prints one line per output that differs and exits 1
if any does; nothing is stored between runs, so both sides are computed anew each time.
"""

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

#: Run inside each side's process: print the outputs as JSON (arrays as lists, exact float32 values).
SIDE = r"""
import json, sys
import anndata as ad, numpy as np, scanpy as sc
from scquery.embed import embed
from scquery.query import query
from scquery.train import train

data = sys.argv[1]
config = {"min_genes": 0, "hidden_sizes": [64, 16], "pretrain_epochs": 2, "epochs": 8}
pairs = {}
celseq = ad.read_h5ad(f"{data}/cellbench_celseq2.h5ad")
dropseq = ad.read_h5ad(f"{data}/cellbench_dropseq.h5ad")
reference = celseq[celseq.obs["cell_line"] != "H1975"].copy()
pairs["cellbench"] = (dict(adata=reference, label_key="cell_line"), dropseq, {})
pbmc = ad.read_h5ad(f"{data}/pbmc3k.h5ad")
# pbmc68k_reduced's .raw holds 765 genes: a small overlap with the model's
query_reading = {"use_raw": True, "min_overlap": 0.1}
pbmc_training = dict(adata=pbmc, label_key="classified", layer="counts")
pairs["pbmc"] = (pbmc_training, sc.datasets.pbmc68k_reduced(), query_reading)
out = {}
for name, (training, adata, reading) in pairs.items():
    bundle = train(**training, config=config, seed=0, verbose=0)
    embedded = adata.copy()
    embed(embedded, bundle, **reading)
    matches = query(adata, bundle, k=10, **reading)
    columns = [c for c in adata.obs.columns if c.startswith("scquery_")]
    out[name] = {
        "model_id": bundle.model_id,
        "embed": embedded.obsm["X_scquery"].tolist(),
        "obsm": adata.obsm["X_scquery"].tolist(),
        "matches": matches.astype(str).to_numpy().tolist(),
        "query_params": json.loads(json.dumps(adata.uns["scquery"]["query_params"], default=str)),
        **{c: adata.obs[c].astype(str).tolist() for c in columns},
    }
import scquery
print(json.dumps({"source": scquery.__file__, "pairs": out}))
"""


def answers(revision, data):
    """The outputs of the code of `revision` (None: the working tree)."""
    with tempfile.TemporaryDirectory() as folder:
        source = REPO / "src"
        if revision is not None:
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", revision, "src"], capture_output=True, check=True
            ).stdout
            tarfile.open(fileobj=io.BytesIO(archive)).extractall(folder, filter="data")
            source = Path(folder) / "src"
        done = subprocess.run(
            [sys.executable, "-c", SIDE, str(data)],
            env={**os.environ, "PYTHONPATH": str(source), "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            cwd=folder,
        )
        if done.returncode:
            sys.exit(f"{revision or 'the working tree'} failed:\n{done.stderr[-3000:]}")
        found = json.loads(done.stdout.splitlines()[-1])
        if not found["source"].startswith(str(source)):
            sys.exit(f"{revision or 'the working tree'}: scquery came from {found['source']}, not {source}.")
        return found["pairs"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not 1 <= len(argv) <= 2:
        sys.exit(__doc__)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: the cross-study pairs are not beside this checkout.")
    before, after = answers(argv[0], DATA), answers(argv[1] if len(argv) > 1 else None, DATA)
    differ = [
        f"{pair}: {key}"
        for pair in before
        for key in before[pair]
        if before[pair][key] != after[pair].get(key)
    ]
    differ += [f"{pair}: {key} (new)" for pair in after for key in after[pair] if key not in before[pair]]
    compared = sum(len(side) for side in before.values())
    print(f"{compared} outputs compared on {', '.join(before)}: {len(differ)} differ")
    print("\n".join(differ))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
