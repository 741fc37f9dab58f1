"""Cross-study tasks from ../shared/data: a reference from one study annotates a query from another.

Pairs: pbmc3k (10x v1, counts) → pbmc68k_reduced (another 10x run; `.raw`, log-normalized); Baron
pancreas, one donor held out as the query; CellBench CEL-seq2 → Drop-seq (three cell lines, two
protocols). Each pair also gives held-out-type tasks: a type is removed from the reference, and its
query cells should come back 'Unknown'.

Both sides keep the values their study ships (`Task.reference_values`, `Task.query_values`), on the
genes they share (in the same order), so every method gets the same inputs; `obs['label']` holds the
cell types (pbmc68k's mapped to pbmc3k's names).
"""

from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from .tasks import DATA_DIR, PBMC68K_TO_PBMC3K

#: The Baron donor held out as the query: it holds most of the acinar cells (208 of 231).
BARON_QUERY_DONOR = "human3"
#: Types held out of each pair's reference, one task each.
HELD_OUT = {
    "pbmc3k→pbmc68k": ["B", "NK"],
    "baron (donor human3 out)": ["gamma", "acinar"],
    "CEL-seq2→Drop-seq": ["H2228"],
}


@dataclass
class Task:
    """One reference → query task; `held_out` names the types removed from the reference."""

    pair: str
    reference: ad.AnnData
    query: ad.AnnData
    reference_values: str  # "counts" or "log1p" (log1p of counts per 10k)
    query_values: str
    held_out: list[str] = field(default_factory=list)

    @property
    def name(self):
        return self.pair + (f", {' + '.join(self.held_out)} held out" if self.held_out else "")


def _labelled(X, obs_names, var_names, labels):
    obs = pd.DataFrame({"label": pd.Categorical(np.asarray(labels, dtype=str))}, index=obs_names)
    return ad.AnnData(
        X=sp.csr_matrix(X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(var_names))
    )


def pbmc_pair(folder=DATA_DIR):
    """pbmc3k → pbmc68k_reduced `.raw`, both log1p(counts per 10k) over all of their own genes, on
    the genes they share (pbmc68k_reduced has no counts, so pbmc3k's counts are not used either)."""
    ref = ad.read_h5ad(folder / "pbmc3k.h5ad")
    full = sc.datasets.pbmc68k_reduced()
    raw = full.raw.to_adata()
    genes = [gene for gene in raw.var_names if gene in set(ref.var_names)]
    mapped = full.obs["bulk_labels"].astype(str).map(PBMC68K_TO_PBMC3K)
    keep = mapped.notna().to_numpy()
    reference = _labelled(ref[:, genes].X, ref.obs_names, genes, ref.obs["classified"])
    query = _labelled(raw[keep][:, genes].X, raw.obs_names[keep], genes, mapped[keep])
    return Task("pbmc3k→pbmc68k", reference, query, "log1p", "log1p")


def baron_pair(folder=DATA_DIR, donor=BARON_QUERY_DONOR):
    """Baron pancreas counts: every other donor → `donor`."""
    data = ad.read_h5ad(folder / "baron_human_pancreas.h5ad")
    donors = data.obs["donor"].astype(str).to_numpy()
    labels = data.obs["cell_type1"].astype(str).to_numpy()
    parts = []
    for rows in (donors != donor, donors == donor):
        parts.append(_labelled(data.X[rows], data.obs_names[rows], data.var_names, labels[rows]))
    return Task(f"baron (donor {donor} out)", *parts, "counts", "counts")


def cellbench_pair(folder=DATA_DIR):
    """CellBench CEL-seq2 counts → Drop-seq counts (Ensembl ids), on their shared genes."""
    ref = ad.read_h5ad(folder / "cellbench_celseq2.h5ad")
    query = ad.read_h5ad(folder / "cellbench_dropseq.h5ad")
    genes = [gene for gene in ref.var_names if gene in set(query.var_names)]
    parts = [_labelled(a[:, genes].X, a.obs_names, genes, a.obs["cell_line"]) for a in (ref, query)]
    return Task("CEL-seq2→Drop-seq", *parts, "counts", "counts")


def without(task, held_out):
    """`task` with the types `held_out` removed from its reference (the query keeps them)."""
    keep = ~task.reference.obs["label"].isin(held_out).to_numpy()
    reference = task.reference[keep].copy()
    reference.obs["label"] = reference.obs["label"].cat.remove_unused_categories()
    return Task(task.pair, reference, task.query, task.reference_values, task.query_values, list(held_out))


def tasks(folder=DATA_DIR):
    """Every pair, then each of its held-out-type tasks (none where the shared data is absent)."""
    if not folder.is_dir():
        return
    for pair in (pbmc_pair(folder), baron_pair(folder), cellbench_pair(folder)):
        yield pair
        for held_out in HELD_OUT[pair.pair]:
            yield without(pair, [held_out])
