"""More cross-study pairs, from public repositories' data folders, and the tuning/validation split.

The shared pairs (`crossstudy_tasks`) have been the development pairs for months. The pairs here come
from other studies, prepared once into a cache outside the repository
(`${SCQUERY_BENCH_DATA:-$HOME/.cache/scquery/benchmark-data}`) by `python -m benchmarks.prepare_pairs`
from fetched repository snapshots; nothing is downloaded at run time. Sources, licences, sizes and
the label mappings are in benchmarks/PAIRS.md.

Each cache file holds the values its study ships (`Dataset.values`) and the study's own cell types
in `obs['label']`. A pair maps both sides' types to shared names (`Pair.reference_labels`,
`Pair.query_labels`: every study label is listed; `None` leaves a type out). Query types that the
reference lacks keep their own names: their cells should come back Unknown (`PairTask.novel`).
`load` gives a `crossstudy_tasks.Task` (a `PairTask`): same-species pairs on the genes both sides
share, in the same order; cross-species pairs on each side's own genes, with `query_species` set.

`TUNING` and `VALIDATION` name every pair, the shared ones included, and were fixed before anything
was chosen on them: choose on the tuning pairs alone; the validation pairs are the ones that count.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .crossstudy_tasks import HELD_OUT as SHARED_HELD_OUT
from .crossstudy_tasks import Task
from .tasks import DATA_DIR


def cache_dir():
    """Where the prepared files live: `$SCQUERY_BENCH_DATA`, else ~/.cache/scquery/benchmark-data."""
    return Path(os.environ.get("SCQUERY_BENCH_DATA") or Path.home() / ".cache" / "scquery" / "benchmark-data")


PREPARE = "python -m benchmarks.prepare_pairs --from /work/.mirror (see benchmarks/PAIRS.md)"


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from: files of one repository snapshot, pinned to a commit."""

    repo: str
    commit: str
    paths: tuple
    licence: str


@dataclass(frozen=True)
class Dataset:
    """One prepared file of the cache: `values` is what its `.X` holds, `obs` the extra columns kept."""

    file: str
    study: str
    source: Source
    values: str  # "counts" or a key of TPM_SCALE ("log2(TPM/10+1)", "log2(TPM+1)")
    species: str = "human"
    obs: tuple = ()


#: Full-length studies ship log2(TPM / scale + 1): the scale of each form.
TPM_SCALE = {"log2(TPM/10+1)": 10.0, "log2(TPM+1)": 1.0}

SC_MIXOLOGY = "7d00ffb0bd043467f365a9358d7312f294f13c9f"
MUDAN = "3636ed2f9a404cbdfcfdce5500384b59a72de666"

#: The prepared files (labelled unless named in `UNLABELLED`).
DATASETS = {
    "cellbench_dropseq_3cl": Dataset(
        "cellbench_dropseq_3cl.h5ad",
        "Tian et al. 2019 (CellBench): three lung adenocarcinoma lines, Drop-seq",
        Source(
            "LuyiTian/sc_mixology",
            SC_MIXOLOGY,
            ("data/csv/sc_dropseq.count.csv.gz", "data/csv/sc_dropseq.metadata.csv.gz"),
            "MIT",
        ),
        "counts",
    ),
    "cellbench_celseq2_5cl": Dataset(
        "cellbench_celseq2_5cl.h5ad",
        "Tian et al. 2019 (CellBench): five lung adenocarcinoma lines, CEL-seq2, three plates "
        "(demuxlet singlets)",
        Source(
            "LuyiTian/sc_mixology",
            SC_MIXOLOGY,
            tuple(
                f"data/csv/sc_celseq2_5cl_{plate}.{part}.csv.gz"
                for plate in ("p1", "p2", "p3")
                for part in ("count", "metadata")
            ),
            "MIT",
        ),
        "counts",
        obs=("batch",),
    ),
    "zheng_sorted_pbmc": Dataset(
        "zheng_sorted_pbmc.h5ad",
        "Zheng et al. 2017: PBMC populations sorted by surface markers (FACS), 10x v1, 2,140 cells",
        Source("JEFworks/MUDAN", MUDAN, ("data/referenceCounts.rda", "data/referenceAnnot.rda"), "GPL-3"),
        "counts",
    ),
    "puram_hnscc": Dataset(
        "puram_hnscc.h5ad",
        "Puram et al. 2017: head and neck squamous cell carcinoma, Smart-seq2 (CHETAH's reference: "
        "20 cells of each of 9 types)",
        Source(
            "jdekanter/CHETAH",
            "c19cba2906b44b3c56c9d8ad3b23f1fdf54b98e1",
            ("data/headneck_ref.rda",),
            "AGPL-3",
        ),
        "log2(TPM/10+1)",
    ),
    "zilionis_mouse_lung": Dataset(
        "zilionis_mouse_lung.h5ad",
        "Zilionis et al. 2019: CD45+ cells of the lungs of healthy and tumour-bearing mice, inDrop "
        "(CLUEY's example: 200 cells of each of 4 types)",
        Source(
            "SydneyBioX/CLUEY", "111ff6e71a04b00cd7e3f9896f7fa3d5ddd35efc", ("data/exampleData.rda",), "GPL-2"
        ),
        "counts",
        species="mouse",
        obs=("condition", "batch"),
    ),
    "zheng_pbmc_donor_a": Dataset(
        "zheng_pbmc_donor_a.h5ad",
        "Zheng et al. 2017: frozen PBMC of donor A, 10x v1, unlabelled (a corpus for pretraining)",
        Source("JEFworks/MUDAN", MUDAN, ("data/pbmcA.rda",), "GPL-3"),
        "counts",
    ),
    "bastidas_ponce_mouse_pancreas": Dataset(
        "bastidas_ponce_mouse_pancreas.h5ad",
        "Bastidas-Ponce et al. 2019: pancreatic endocrinogenesis of E15.5 mouse embryos, 10x v2 "
        "(scVelo's example, as VeloViz ships it: 739 cells, spliced counts)",
        Source(
            "JEFworks-Lab/veloviz",
            "80e12d498c54e3c3adfe3cffdc9f34af04d51041",
            ("data/pancreas.rda",),
            "GPL-3",
        ),
        "counts",
        species="mouse",
    ),
    "finak_mait": Dataset(
        "finak_mait.h5ad",
        "Finak et al. 2015 (MAST): MAIT cells of one healthy donor, Fluidigm C1 full-length, half of them "
        "stimulated for 24 h with a cytokine cocktail",
        Source("RGLab/MAST", "1c60223ed85bad087665c11ffe7ce7db2b04e835", ("data/maits.RData",), "GPL-2+"),
        "log2(TPM+1)",
        obs=("condition",),
    ),
}
UNLABELLED = ("zheng_pbmc_donor_a",)
#: The shared pbmc3k and Baron human pancreas (../shared/data, see crossstudy_tasks), every cell,
#: as one side of a new pair: file, label column, where the counts are.
SHARED_PBMC3K = "shared:pbmc3k"
SHARED_BARON = "shared:baron"
SHARED = {
    SHARED_PBMC3K: ("pbmc3k.h5ad", "classified", "counts"),
    SHARED_BARON: ("baron_human_pancreas.h5ad", "cell_type1", None),
}

_CD4 = "CD4 T"
_SORTED_COARSE = {  # Zheng's sorted populations, T subsets merged
    "bcells": "B",
    "monocytes": "Monocyte",
    "nk": "NK",
    "cytotoxict": "T",
    "naivecytotoxic": "T",
    "naivet": "T",
    "memoryt": "T",
    "thelper": "T",
    "regulatoryt": "T",
}


@dataclass(frozen=True)
class Pair:
    """A reference study → a query study: the shared names of both sides' types, the kinds of
    difference the pair tests, and the types held out of the reference, one task each."""

    name: str
    reference: str
    query: str
    reference_labels: dict
    query_labels: dict
    kinds: tuple
    held_out: tuple


PAIRS = {
    pair.name: pair
    for pair in (
        Pair(
            "CellBench 3 lines (Drop-seq) → 5 lines (CEL-seq2)",
            "cellbench_dropseq_3cl",
            "cellbench_celseq2_5cl",
            {"H1975": "H1975", "H2228": "H2228", "HCC827": "HCC827"},
            {"H1975": "H1975", "H2228": "H2228", "HCC827": "HCC827", "A549": "A549", "H838": "H838"},
            ("novel types", "cross-protocol"),
            ("HCC827",),
        ),
        Pair(
            "sorted PBMC → pbmc3k",
            "zheng_sorted_pbmc",
            SHARED_PBMC3K,
            {
                "bcells": "B",
                "monocytes": "CD14+ Mono",
                "nk": "NK",
                "cytotoxict": "CD8 T",
                "naivecytotoxic": "CD8 T",
                "naivet": _CD4,
                "memoryt": _CD4,
                "thelper": _CD4,
                "regulatoryt": _CD4,
            },
            {
                "B": "B",
                "CD14+ Mono": "CD14+ Mono",
                "NK": "NK",
                "CD8 T": "CD8 T",
                "Naive CD4 T": _CD4,
                "Memory CD4 T": _CD4,
                "FCGR3A+ Mono": "FCGR3A+ Mono",
                "DC": "DC",
                "Platelet": "Platelet",
            },
            ("novel types",),
            ("B", "NK"),
        ),
        Pair(
            "sorted PBMC → head-and-neck tumour (Smart-seq2)",
            "zheng_sorted_pbmc",
            "puram_hnscc",
            {
                "bcells": "B",
                "monocytes": "Monocyte",
                "nk": "NK",
                "cytotoxict": "CD8 T",
                "naivecytotoxic": "CD8 T",
                "naivet": _CD4,
                "memoryt": _CD4,
                "thelper": _CD4,
                "regulatoryt": "Treg",
            },
            {
                "B cell": "B",
                "CD4 T cell": _CD4,
                "CD8 T cell": "CD8 T",
                "reg. T cell": "Treg",
                "Macrophage": "Macrophage",
                "Dendritic": "Dendritic",
                "Mast": "Mast",
                "Endothelial": "Endothelial",
                "Fibroblast": "Fibroblast",
            },
            ("novel types", "cross-protocol"),
            ("B", "CD8 T"),
        ),
        Pair(
            "human sorted PBMC → mouse lung immune cells",
            "zheng_sorted_pbmc",
            "zilionis_mouse_lung",
            _SORTED_COARSE,
            {"B cells": "B", "NK cells": "NK", "T cells": "T", "Neutrophils": "Neutrophil"},
            ("cross-species", "novel types", "condition"),
            ("B", "NK"),
        ),
        Pair(
            "human head-and-neck tumour (Smart-seq2) → mouse lung immune cells",
            "puram_hnscc",
            "zilionis_mouse_lung",
            {
                "B cell": "B",
                "CD4 T cell": "T",
                "CD8 T cell": "T",
                "reg. T cell": "T",
                "Macrophage": "Macrophage",
                "Dendritic": "Dendritic",
                "Mast": "Mast",
                "Endothelial": "Endothelial",
                "Fibroblast": "Fibroblast",
            },
            {"B cells": "B", "NK cells": "NK", "T cells": "T", "Neutrophils": "Neutrophil"},
            ("cross-species", "novel types", "condition", "few labels"),
            ("B",),
        ),
        Pair(
            "human pancreas (Baron) → mouse embryonic pancreas",
            SHARED_BARON,
            "bastidas_ponce_mouse_pancreas",
            {
                "alpha": "Alpha",
                "beta": "Beta",
                "delta": "Delta",
                "gamma": "PP",
                "epsilon": "Epsilon",
                "ductal": "Ductal",
                "acinar": "Acinar",
                "activated_stellate": "Stellate",
                "quiescent_stellate": "Stellate",
                "endothelial": "Endothelial",
                "macrophage": "Macrophage",
                "mast": "Mast",
                "t_cell": "T",
                "schwann": "Schwann",
            },
            {
                "Ductal": "Ductal",
                "Alpha": "Alpha",
                "Beta": "Beta",
                "Delta": "Delta",
                "Epsilon": "Epsilon",
                "Ngn3 low EP": "Ngn3 low EP",
                "Ngn3 high EP": "Ngn3 high EP",
                "Pre-endocrine": "Pre-endocrine",
            },
            ("cross-species", "one tissue", "novel types"),
            ("Beta", "Ductal"),
        ),
        Pair(
            "human sorted PBMC → MAIT cells, half cytokine-stimulated (C1)",
            "zheng_sorted_pbmc",
            "finak_mait",
            _SORTED_COARSE,
            {"MAIT": "T"},
            ("stimulation", "cross-protocol"),
            (),  # holding T out would leave no known query cell
        ),
    )
}

#: Fixed before any choice was made on the new pairs (rule in benchmarks/PAIRS.md). Choose every
#: signal, feature and threshold on TUNING alone; VALIDATION is the set that counts.
TUNING = [
    "pbmc3k→pbmc68k",
    "baron (donor human3 out)",
    "CEL-seq2→Drop-seq",
    "sorted PBMC → pbmc3k",
]
VALIDATION = [
    "CellBench 3 lines (Drop-seq) → 5 lines (CEL-seq2)",
    "sorted PBMC → head-and-neck tumour (Smart-seq2)",
    "human sorted PBMC → mouse lung immune cells",
    "human head-and-neck tumour (Smart-seq2) → mouse lung immune cells",
    "human pancreas (Baron) → mouse embryonic pancreas",
    "human sorted PBMC → MAIT cells, half cytokine-stimulated (C1)",
]
#: Types held out of each pair's reference (one task each), the shared pairs' included.
HELD_OUT = {**SHARED_HELD_OUT, **{pair.name: list(pair.held_out) for pair in PAIRS.values()}}
#: The pairs that ask no classification (their query is one type): left out where types are told apart.
ONE_TYPE = ("human sorted PBMC → MAIT cells, half cytokine-stimulated (C1)",)


def split_of(pair_name):
    """'tuning' or 'validation' for a pair's name (a held-out task is in its pair's set)."""
    if pair_name in TUNING:
        return "tuning"
    if pair_name in VALIDATION:
        return "validation"
    raise KeyError(f"{pair_name!r} is in neither TUNING nor VALIDATION (benchmarks/pairs.py)")


@dataclass
class PairTask(Task):
    """A `Task` of a pair from the cache: `query_species` is set where the query's species differs
    from the reference's (its genes are then its own), `novel` names the query types the reference
    lacks, `split` is 'tuning' or 'validation'."""

    query_species: str | None = None
    novel: list = field(default_factory=list)
    split: str = "validation"


class MissingData(FileNotFoundError):
    """A pair's prepared file is absent; the message says how to prepare it."""


def _path(name, cache):
    if name in SHARED:
        path = DATA_DIR / SHARED[name][0]
        where = f"the shared data ({DATA_DIR}) is absent"
    else:
        path = Path(cache) / DATASETS[name].file
        where = f"{path} is absent: prepare the cache with {PREPARE}"
    if not path.is_file():
        raise MissingData(where)
    return path


def _read(name, cache):
    """The study's cells (`obs['label']`: its own types) and what `.X` holds: 'counts' or 'log1p'
    (log1p of counts per 10k, converted here from the values a study ships)."""
    data = ad.read_h5ad(_path(name, cache))
    if name in SHARED:
        _, label, layer = SHARED[name]
        data = ad.AnnData(
            data.layers[layer] if layer else data.X,
            obs=data.obs[[label]].set_axis(["label"], axis=1),
            var=pd.DataFrame(index=data.var_names),
        )
        return data, "counts"
    if DATASETS[name].values == "counts":
        return data, "counts"
    # log2(TPM/scale + 1) → log1p of TPM per 10k over the genes the file holds.
    tpm = sp.csr_matrix(data.X, dtype=np.float64)
    tpm.data = TPM_SCALE[DATASETS[name].values] * (np.exp2(tpm.data) - 1.0)
    totals = np.asarray(tpm.sum(axis=1)).ravel()
    tpm = sp.diags(1e4 / np.where(totals > 0, totals, 1.0)) @ tpm
    tpm.data = np.log1p(tpm.data)
    data.X = tpm.astype(np.float32)
    return data, "log1p"


def _side(data, mapping, what, name, extra):
    labels = data.obs["label"].astype(str)
    unlisted = sorted(set(labels) - set(mapping))
    if unlisted:
        raise ValueError(f"{name}: the {what}'s types {unlisted} are not in its label mapping")
    mapped = labels.map(mapping)
    keep = mapped.notna().to_numpy()
    obs = pd.DataFrame(
        {"label": pd.Categorical(mapped[keep].to_numpy(dtype=str))}, index=data.obs_names[keep]
    )
    for column in extra:
        if column in data.obs:
            obs[column] = data.obs[column].to_numpy()[keep]
    X = sp.csr_matrix(data.X[keep], dtype=np.float32)
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=data.var_names.copy()))


def load(name, *, cache=None):
    """The pair `name` of `PAIRS` as a `PairTask`; `MissingData` where a file is absent."""
    pair, cache = PAIRS[name], cache or cache_dir()
    (reference, reference_values), (query, query_values) = (
        _read(pair.reference, cache),
        _read(pair.query, cache),
    )
    species = {
        side: DATASETS[side].species if side in DATASETS else "human" for side in (pair.reference, pair.query)
    }
    extra = DATASETS[pair.query].obs if pair.query in DATASETS else ()
    reference = _side(reference, pair.reference_labels, "reference", name, ())
    query = _side(query, pair.query_labels, "query", name, extra)
    query_species = species[pair.query] if species[pair.query] != species[pair.reference] else None
    if query_species is None:
        genes = reference.var_names.intersection(query.var_names, sort=False)
        reference, query = reference[:, genes].copy(), query[:, genes].copy()
    novel = sorted(set(query.obs["label"]) - set(reference.obs["label"]))
    return PairTask(
        name, reference, query, reference_values, query_values, [], query_species, novel, split_of(name)
    )


def on_shared_genes(task):
    """(reference, query) on the genes they share, in the same order: a cross-species query renamed
    to the reference's genes through the built-in one-to-one orthologues (CellTypist's
    `Model.convert` default), so peers that need one gene space get the same inputs."""
    if getattr(task, "query_species", None) is None:  # a shared pair's task has one species
        return task.reference, task.query
    from scquery.orthologs import builtin_map

    pairs = builtin_map(task.query_species, "human").pairs
    pairs = pairs[
        pairs["query_gene"].isin(task.query.var_names)
        & pairs["reference_gene"].isin(task.reference.var_names)
    ]
    pairs = pairs[
        ~pairs["query_gene"].duplicated(keep=False) & ~pairs["reference_gene"].duplicated(keep=False)
    ]
    query = task.query[:, pairs["query_gene"].to_numpy()].copy()
    query.var_names = pairs["reference_gene"].to_numpy()
    return task.reference[:, query.var_names].copy(), query


def without(task, held_out):
    """`task` with the types `held_out` removed from its reference (the query keeps them)."""
    keep = ~task.reference.obs["label"].isin(held_out).to_numpy()
    reference = task.reference[keep].copy()
    reference.obs["label"] = reference.obs["label"].cat.remove_unused_categories()
    return dataclasses.replace(task, reference=reference, held_out=list(held_out))


def tasks(*, cache=None, log=print):
    """Every pair of `PAIRS` whose files are there, then each of its held-out-type tasks; a pair
    whose files are absent is skipped with one line saying how to prepare them."""
    for name in PAIRS:
        try:
            pair = load(name, cache=cache)
        except MissingData as missing:
            log(f"pairs: skipping {name!r}: {missing}")
            continue
        yield pair
        for held_out in HELD_OUT[name]:
            yield without(pair, [held_out])
