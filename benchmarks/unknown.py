"""Unknown calls that cannot be tuned to one pair: every type held out in turn, and conditions laid on
known types.

- Leave one type out: on every cross-study pair (`crossstudy_tasks`), each type with at least
  `MIN_QUERY_CELLS` query cells is removed from the reference in turn; the share of its query cells
  called 'Unknown' (caught) and of the other cells (known cells rejected), and macro-F1 over the known
  types' cells.
- Conditions: on the pairs whose genes are symbols, a real gene programme (`PROGRAMMES`: interferon-
  stimulated genes, heat shock, the cell cycle) is raised 2-8x (per gene, seeded) in half of one type's
  query cells, then in all of them, and the query (same model as the unperturbed one) is annotated
  again. The affected cells must keep their labels: their 'Unknown' share and their accuracy next to
  the same cells' in the unperturbed query.
- Per-type F1 of the prediction on each whole pair.
- Reconstruction error as a signal (`reconstruction`), on every held-out task: measured, not used.
"""

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import f1_score

from scquery.query import UNKNOWN, query
from scquery.train import pretrain, train

from .crossstudy_tasks import Task, tasks, without
from .methods import scquery_config
from .metrics import label_scores
from .reconstruction import measure

#: Types with fewer query cells are not held out (too few cells to measure a share).
MIN_QUERY_CELLS = 30
#: Shares of one type's query cells that carry the programme.
AFFECTED = (0.5, 1.0)
#: Real programmes: interferon-stimulated genes (Schoggins et al. 2011; MSigDB hallmark interferon-alpha
#: response), heat shock and dissociation stress (van den Brink et al. 2017), the cell cycle's S and
#: G2/M genes (Tirosh et al. 2016, as in scanpy's tutorial).
PROGRAMMES = {
    "interferon": (
        "ISG15 IFI6 IFI27 IFI44 IFI44L IFIT1 IFIT2 IFIT3 IFIT5 IFITM1 IFITM2 IFITM3 MX1 MX2 OAS1 OAS2 OAS3 "
        "OASL RSAD2 STAT1 STAT2 IRF7 IRF9 IRF1 ISG20 LY6E XAF1 HERC5 HERC6 EPSTI1 BST2 SAMD9 SAMD9L PLSCR1 "
        "IFI35 IFI16 CMPK2 DDX58 DDX60 IFIH1 TNFSF10 GBP1 GBP2 GBP3 GBP4 GBP5 SP100 SP110 PARP9 PARP14 "
        "DTX3L EIF2AK2 TRIM22 TRIM21 TRIM5 USP18 PSMB8 PSMB9 TAP1 LGALS3BP CXCL10 CCL8 SOCS1 LAP3 RTP4 "
        "HELZ2 NMI ADAR ZBP1 APOL6 LAMP3 TDRD7 UBE2L6 SECTM1"
    ).split(),
    "heat shock": (
        "HSPA1A HSPA1B HSPA6 HSPA8 HSPH1 HSP90AA1 HSP90AB1 HSPB1 HSPD1 HSPE1 DNAJB1 DNAJA1 DNAJB4 DNAJB6 "
        "BAG3 HSPA4L CRYAB CHORDC1 FKBP4 STIP1 AHSA1 HSPA5 DNAJA4 UBB UBC FOS FOSB JUN JUNB JUND ATF3 EGR1 "
        "IER2 IER3 DUSP1 ZFP36 NR4A1 PPP1R15A HSPA2 SERPINH1 CACYBP PTGES3 CCT2 HSPA4 HSP90B1 DNAJB9 SOD1 "
        "MT1X MT2A"
    ).split(),
    "cell cycle": (
        "MCM5 PCNA TYMS FEN1 MCM2 MCM4 RRM1 UNG GINS2 MCM6 CDCA7 DTL PRIM1 UHRF1 HELLS RFC2 RPA2 NASP "
        "RAD51AP1 GMNN WDR76 SLBP CCNE2 UBR7 POLD3 MSH2 ATAD2 RAD51 RRM2 CDC45 CDC6 EXO1 TIPIN DSCC1 BLM "
        "CASP8AP2 USP1 CLSPN POLA1 CHAF1B BRIP1 E2F8 HMGB2 CDK1 NUSAP1 UBE2C BIRC5 TPX2 TOP2A NDC80 CKS2 "
        "NUF2 CKS1B MKI67 TMPO CENPF TACC3 FAM64A SMC4 CCNB2 CKAP2L CKAP2 AURKB BUB1 KIF11 ANP32E TUBB4B "
        "GTSE1 KIF20B HJURP CDCA3 HN1 CDC20 TTK CDC25C KIF2C RANGAP1 NCAPD2 DLGAP5 CDCA2 CDCA8 ECT2 KIF23 "
        "HMMR AURKA PSRC1 ANLN LBR CKAP5 CENPE CTCF NEK2 G2E3 GAS2L3 CBX5 CENPA"
    ).split(),
}


def with_programme(task: Task, cells, genes, *, seed=0):
    """The query of `task` with `genes` raised 2-8x (a factor per gene, seeded) in the rows `cells`:
    value × f + (f - 1) × the affected cells' mean, so unexpressed genes are switched on too. Counts stay
    whole counts; log1p(CP10k) values are renormalized to 10,000 per cell and logged again."""
    adata = task.query.copy()
    columns = np.flatnonzero(adata.var_names.isin(genes))
    X = sp.csr_matrix(adata.X, dtype=np.float64)
    linear = X[cells].toarray() if task.query_values == "counts" else np.expm1(X[cells].toarray())
    factor = 2.0 ** np.random.default_rng(seed).uniform(1, 3, columns.size)
    block = linear[:, columns]
    linear[:, columns] = block * factor + (factor - 1) * block.mean(axis=0)
    if task.query_values == "counts":
        linear = np.rint(linear)
    else:
        linear = np.log1p(linear / linear.sum(axis=1, keepdims=True) * 1e4)
    X = X.tolil()
    X[cells] = linear
    adata.X = sp.csr_matrix(X, dtype=np.float32)
    return adata, int(columns.size)


def _annotate(bundle, adata):
    """The prediction of each cell of `adata` (annotated as a copy) and why each Unknown one is."""
    adata = adata.copy()
    query(adata, bundle)
    columns = adata.obs[["scquery_prediction", "scquery_unknown_reason"]].astype(str)
    return columns["scquery_prediction"].to_numpy(), columns["scquery_unknown_reason"].to_numpy()


def _reasons(reasons):
    return {reason: int(n) for reason, n in pd.Series(reasons[reasons != ""]).value_counts().items()}


def _conditions(task, bundle, baseline, log):
    """Each programme on each type's query cells (`AFFECTED` shares): Unknown and accuracy."""
    rows = []
    truth = task.query.obs["label"].astype(str).to_numpy()
    model_genes = set(bundle.genes)
    types, counts = np.unique(truth, return_counts=True)
    for kind, genes in PROGRAMMES.items():
        in_model = len(model_genes.intersection(genes))
        for cell_type in types[counts >= MIN_QUERY_CELLS]:
            rows_of_type = np.flatnonzero(truth == cell_type)
            for share in AFFECTED:
                size = int(round(share * rows_of_type.size))
                cells = np.sort(np.random.default_rng(0).choice(rows_of_type, size, replace=False))
                adata, raised = with_programme(task, cells, genes)
                predicted, reasons = _annotate(bundle, adata)
                row = {
                    "pair": task.pair,
                    "programme": kind,
                    "type": cell_type,
                    "share": share,
                    "cells": int(cells.size),
                    "genes_raised": raised,
                    "genes_in_model": in_model,
                    "unknown": float((predicted[cells] == UNKNOWN).mean()),
                    "accuracy": float((predicted[cells] == truth[cells]).mean()),
                    "accuracy_unperturbed": float((baseline[cells] == truth[cells]).mean()),
                    "unknown_unperturbed": float((baseline[cells] == UNKNOWN).mean()),
                    "reasons": _reasons(reasons[cells]),
                }
                rows.append(row)
                log(
                    f"  {kind} on {share:.0%} of {cell_type} ({raised} genes, {in_model} in the model): "
                    f"Unknown {row['unknown']:.3f} (was {row['unknown_unperturbed']:.3f}), accuracy "
                    f"{row['accuracy']:.3f} (was {row['accuracy_unperturbed']:.3f})"
                )
    return rows


def _per_type(task, predicted):
    truth = task.query.obs["label"].astype(str).to_numpy()
    types = sorted(set(truth))
    scores = f1_score(truth, predicted, labels=types, average=None, zero_division=0)
    counts = pd.Series(truth).value_counts()
    return [
        {"pair": task.pair, "type": t, "cells": int(counts[t]), "f1": float(s)}
        for t, s in zip(types, scores, strict=True)
    ]


def run_unknown(*, quick, seed=0, log=print):
    """Figures of every pair (the CellBench pair only, with a small network, when `quick`)."""
    held_out, conditions, per_type = [], [], []
    config = scquery_config(quick=quick)
    for task in tasks():
        if task.held_out or (quick and not task.pair.startswith("CEL-seq2")):
            continue
        log(f"{task.pair}: {task.reference.n_obs} reference cells, {task.query.n_obs} query cells")
        bundle = train(task.reference, label_key="label", config=config, seed=seed)
        baseline, _ = _annotate(bundle, task.query)
        per_type += _per_type(task, baseline)
        if task.query.var_names.str.startswith("ENSG").mean() < 0.5:  # programmes are named by symbol
            conditions += _conditions(task, bundle, baseline, log)
        truth = task.query.obs["label"].astype(str).to_numpy()
        types, counts = np.unique(truth, return_counts=True)
        known_types = set(task.reference.obs["label"].astype(str))
        for cell_type in types[counts >= MIN_QUERY_CELLS]:
            if cell_type not in known_types:
                continue
            reduced = without(task, [cell_type])
            # the same model as train() alone, with the pretraining's autoencoder at hand
            encoder = pretrain(reduced.reference, label_key="label", config=config, seed=seed)
            model = train(reduced.reference, label_key="label", config=config, encoder=encoder, seed=seed)
            predicted, reasons = _annotate(model, task.query)
            held = truth == cell_type
            row = {
                "pair": task.pair,
                "held_out": cell_type,
                "cells": int(held.sum()),
                "held_out_unknown": float((predicted[held] == UNKNOWN).mean()),
                "known_unknown": float((predicted[~held] == UNKNOWN).mean()),
                "macro_f1": label_scores(truth[~held], predicted[~held])["macro_f1"],
                "called": pd.Series(predicted[held]).value_counts().head(3).to_dict(),
                "known_reasons": _reasons(reasons[~held]),
                "reconstruction": measure(encoder, model, reduced.reference, task.query, held),
            }
            held_out.append(row)
            log(
                f"  {cell_type} held out: {row['held_out_unknown']:.1%} Unknown, known cells "
                f"{row['known_unknown']:.1%} Unknown, macro-F1 {row['macro_f1']:.3f}"
            )
    return {"held_out": held_out, "conditions": conditions, "per_type": per_type}
