"""Prepare the cache of `benchmarks.pairs` from fetched repository snapshots.

    python -m benchmarks.prepare_pairs --from /work/.mirror [--out DIR]

`--from` holds one bare or non-bare git copy per repository, named `owner+name` (as the project's
`fetch` tool leaves them: `owner+name/repo`); each file is read at the commit `pairs.DATASETS`
pins, so the cache is the same wherever it is made. R data files (.rda) are exported by `Rscript`
(Debian: `apt-get install r-base-core r-bioc-singlecellexperiment`). Each dataset is written as
h5ad beside its final name, then renamed into place, with its source and a checksum in
`manifest.json`; the default cache is `$SCQUERY_BENCH_DATA` or ~/.cache/scquery/benchmark-data.
"""

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from scquery.orthologs import builtin_map

from .pairs import DATASETS, cache_dir

#: Exports one object of an .rda file (or one element of a list object): its matrix (genes × cells,
#: Matrix Market), names and cell table, a named vector of labels, or a table.
_EXPORT_R = r"""
args <- commandArgs(TRUE)
suppressMessages(library(Matrix))
e <- new.env(); load(args[1], envir = e); x <- e[[args[2]]]; out <- args[3]
if (is.list(x) && !is.data.frame(x)) x <- x[[args[4]]]  # one element of a plain list
if (is.data.frame(x)) {
  write.csv(x, file.path(out, "table.csv"))
  quit(save = "no")
}
if (is.character(x) || is.factor(x)) {
  labels <- data.frame(cell = names(x), label = as.character(x))
  write.csv(labels, file.path(out, "labels.csv"), row.names = FALSE)
  quit(save = "no")
}
if (methods::is(x, "SingleCellExperiment")) {
  suppressMessages(library(SingleCellExperiment))
  write.csv(as.data.frame(colData(x)), file.path(out, "obs.csv"))
  x <- assay(x, args[4])
}
x <- as(as(x, "CsparseMatrix"), "generalMatrix")
writeMM(x, file.path(out, "matrix.mtx"))
writeLines(rownames(x), file.path(out, "genes.txt"))
writeLines(colnames(x), file.path(out, "cells.txt"))
"""


class PrepareError(Exception):
    """A user-facing failure: missing snapshot, commit, file or R."""


def git_dir(mirror, repo):
    """The git directory of `repo` ('owner/name') under `mirror`."""
    base = Path(mirror) / repo.replace("/", "+")
    for candidate in (base / "repo", base / "repo" / ".git", base, base / ".git"):
        if (candidate / "HEAD").is_file() and (candidate / "objects").is_dir():
            return candidate
    raise PrepareError(f"no snapshot of {repo} under {mirror}: fetch github:{repo} first")


def extract(mirror, source, folder):
    """The files of `source` at its commit, copied into `folder`; their paths by repository path."""
    repo = git_dir(mirror, source.repo)
    paths = {}
    for path in source.paths:
        target = Path(folder) / Path(path).name
        result = subprocess.run(
            ["git", "--git-dir", str(repo), "show", f"{source.commit}:{path}"], capture_output=True
        )
        if result.returncode != 0:
            raise PrepareError(
                f"{source.repo} at {source.commit[:10]} has no {path} in {repo} "
                f"({result.stderr.decode().strip()}): fetch the repository again"
            )
        target.write_bytes(result.stdout)
        paths[path] = target
    return paths


def export_r(rda, name, folder, assay=None):
    """Object `name` of `rda` as (matrix genes × cells, genes, cells, obs or None), its labels, or a
    table; `assay` names a SingleCellExperiment's assay or an element of a list object. (A matrix is
    genes × cells as R holds it: rows come back as `genes`, columns as `cells`.)"""
    if shutil.which("Rscript") is None:
        raise PrepareError(
            "Rscript is not installed; it reads the R data files: apt-get install r-base-core "
            "r-bioc-singlecellexperiment"
        )
    out = Path(folder) / "-".join([Path(rda).stem, name] + ([assay] if assay else []))
    out.mkdir()
    script = Path(folder) / "export.R"
    script.write_text(_EXPORT_R)
    command = ["Rscript", str(script), str(rda), name, str(out)] + ([assay] if assay else [])
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise PrepareError(f"Rscript could not read {name} from {rda}: {result.stderr.strip()[-500:]}")
    if (out / "table.csv").is_file():
        return pd.read_csv(out / "table.csv", index_col=0, keep_default_na=False)
    if (out / "labels.csv").is_file():
        return pd.read_csv(out / "labels.csv", keep_default_na=False).set_index("cell")["label"]
    matrix = sp.csr_matrix(scipy.io.mmread(out / "matrix.mtx"))
    genes = (out / "genes.txt").read_text().splitlines()
    cells = (out / "cells.txt").read_text().splitlines()
    obs = pd.read_csv(out / "obs.csv", index_col=0) if (out / "obs.csv").is_file() else None
    return matrix, genes, cells, obs


def _anndata(matrix_genes_by_cells, genes, cells, obs):
    X = sp.csr_matrix(matrix_genes_by_cells.T, dtype=np.float32)
    obs = obs.copy()
    obs.index = pd.Index(cells).astype(str)
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=pd.Index(genes).astype(str)))
    adata.obs["label"] = adata.obs["label"].astype(str).astype("category")
    return adata


def _csv_counts(count_file, metadata_file):
    """A CellBench count table (genes × cells) and its cell table."""
    with gzip.open(count_file, "rt") as handle:
        counts = pd.read_csv(handle, index_col=0)
    with gzip.open(metadata_file, "rt") as handle:
        metadata = pd.read_csv(handle, index_col=0)
    return counts, metadata.loc[counts.columns]


def cellbench_dropseq_3cl(files, folder):
    counts, cells = _csv_counts(*files.values())
    obs = pd.DataFrame({"label": cells["cell_line"].to_numpy()})
    return _anndata(sp.csr_matrix(counts.to_numpy()), counts.index, counts.columns, obs)


def cellbench_celseq2_5cl(files, folder):
    tables = list(files.values())
    parts, plates = [], []
    for count_file, metadata_file in zip(tables[0::2], tables[1::2], strict=True):
        plates.append(count_file.name.split(".")[0].rsplit("_", 1)[-1])
        counts, cells = _csv_counts(count_file, metadata_file)
        singlets = (cells["demuxlet_cls"] == "SNG").to_numpy()  # demuxlet: one cell line's SNPs
        obs = pd.DataFrame(
            {"label": cells["cell_line_demuxlet"].to_numpy(), "batch": cells["batch"].to_numpy()}
        )
        part = _anndata(sp.csr_matrix(counts.to_numpy()), counts.index, counts.columns, obs)
        parts.append(part[singlets].copy())
    # The plates' tables reuse cell names: each name gets its plate appended ("p1_A1-p2").
    merged = ad.concat(parts, join="outer", fill_value=0, keys=plates, index_unique="-")
    merged.obs["label"] = merged.obs["label"].astype("category")
    return merged


def zheng_sorted_pbmc(files, folder):
    counts_file, labels_file = files.values()
    matrix, genes, cells, _ = export_r(counts_file, "referenceCounts", folder)
    labels = export_r(labels_file, "referenceAnnot", folder)
    return _anndata(matrix, genes, cells, pd.DataFrame({"label": labels.loc[cells].to_numpy()}))


def zheng_pbmc_donor_a(files, folder):
    matrix, genes, cells, _ = export_r(next(iter(files.values())), "pbmcA", folder)
    return _anndata(matrix, genes, cells, pd.DataFrame({"label": ["unlabelled"] * len(cells)}))


def puram_hnscc(files, folder):
    matrix, genes, cells, obs = export_r(next(iter(files.values())), "headneck_ref", folder, "counts")
    return _anndata(matrix, genes, cells, pd.DataFrame({"label": obs["celltypes"].to_numpy()}))


def mouse_symbols(names):
    """Mouse gene symbols in their own case, for a study that shipped them upper-cased: the built-in
    orthologue table's spelling where it lists the gene, else capitalised (mt- and -Rik kept)."""
    known = pd.unique(builtin_map("mouse", "human").pairs["query_gene"])
    spelling = {name.upper(): name for name in known if not name.upper().startswith("ENS")}
    restored = []
    for name in names:
        upper = name.upper()
        if upper in spelling:
            restored.append(spelling[upper])
        elif upper.startswith("MT-"):
            restored.append("mt-" + upper[3:].capitalize())
        elif upper.endswith("RIK"):
            restored.append(upper[:-3] + "Rik")
        else:
            restored.append(upper.capitalize())
    return restored


def zilionis_mouse_lung(files, folder):
    logcounts, genes, cells, obs = export_r(next(iter(files.values())), "exampleData", folder, "logcounts")
    # scater's logcounts are log2(count / size factor + 1): the counts come back exactly.
    counts = sp.csr_matrix(logcounts, dtype=np.float64)
    counts.data = np.exp2(counts.data) - 1.0
    counts = counts @ sp.diags(obs["sizeFactor"].to_numpy())
    counts.data = np.rint(counts.data)
    counts.eliminate_zeros()
    table = pd.DataFrame(
        {
            "label": obs["Major.cell.type"].to_numpy(),
            "condition": obs["Tissue"].map({"healthy": "healthy", "tumor": "tumour-bearing"}).to_numpy(),
            "batch": obs["Library.prep.batch"].to_numpy(),
            "animal": obs["Animal"].to_numpy(),
        }
    )
    adata = _anndata(counts, mouse_symbols(genes), cells, table)
    adata.var_names_make_unique()
    return adata


def bastidas_ponce_mouse_pancreas(files, folder):
    rda = next(iter(files.values()))
    # velocyto's spliced counts: the exonic reads a 10x count matrix holds (unspliced left out).
    spliced, genes, cells, _ = export_r(rda, "pancreas", folder, "spliced")
    labels = export_r(rda, "pancreas", folder, "clusters")
    return _anndata(spliced, genes, cells, pd.DataFrame({"label": labels.loc[cells].to_numpy()}))


def finak_mait(files, folder):
    rda = next(iter(files.values()))
    # log2(TPM + 1) from RSEM, cells × transcripts' primer ids; several ids share a gene symbol.
    values, cells, primers, _ = export_r(rda, "maits", folder, "expressionmat")
    genes = export_r(rda, "maits", folder, "fdat").loc[primers, "symbolid"].to_numpy()
    table = export_r(rda, "maits", folder, "cdat").loc[cells]
    # MAST's vignette filter of failed libraries.
    keep = (
        (table["pastFastqc"] == "PASS")
        & (table["exonRate"] > 0.3)
        & (table["PercentToHuman"] > 0.6)
        & (table["nGeneOn"] > 4000)
    ).to_numpy()
    tpm = values.toarray()[keep]
    tpm = np.exp2(tpm) - 1.0
    symbols, column = np.unique(genes, return_inverse=True)
    summed = np.zeros((tpm.shape[0], len(symbols)))
    np.add.at(summed.T, column, tpm.T)  # TPM of the ids of one symbol, added
    obs = pd.DataFrame(
        {
            "label": "MAIT",
            "condition": table["condition"]
            .map({"Unstim": "unstimulated", "Stim": "stimulated"})
            .to_numpy()[keep],
        }
    )
    return _anndata(sp.csr_matrix(np.log2(summed + 1.0)).T, symbols, np.asarray(cells)[keep], obs)


BUILDERS = {
    "cellbench_dropseq_3cl": cellbench_dropseq_3cl,
    "cellbench_celseq2_5cl": cellbench_celseq2_5cl,
    "zheng_sorted_pbmc": zheng_sorted_pbmc,
    "puram_hnscc": puram_hnscc,
    "zilionis_mouse_lung": zilionis_mouse_lung,
    "zheng_pbmc_donor_a": zheng_pbmc_donor_a,
    "bastidas_ponce_mouse_pancreas": bastidas_ponce_mouse_pancreas,
    "finak_mait": finak_mait,
}


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare(mirror, out, *, names=None, log=print):
    """Write the datasets `names` (all by default) into `out`; returns the manifest."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in names or DATASETS:
        dataset = DATASETS[name]
        with tempfile.TemporaryDirectory() as folder:
            files = extract(mirror, dataset.source, folder)
            adata = BUILDERS[name](files, folder)
        adata.uns["source"] = {
            "study": dataset.study,
            "repo": dataset.source.repo,
            "commit": dataset.source.commit,
            "paths": list(dataset.source.paths),
            "licence": dataset.source.licence,
            "values": dataset.values,
            "species": dataset.species,
        }
        out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
        target = out / dataset.file
        partial = target.with_name(target.name + ".partial")
        adata.write_h5ad(partial, compression="gzip")
        partial.replace(target)
        manifest[name] = {
            **adata.uns["source"],
            "file": dataset.file,
            "cells": adata.n_obs,
            "genes": adata.n_vars,
            "sha256": _sha256(target),
        }
        counts = adata.obs["label"].value_counts()
        log(
            f"{name}: {adata.n_obs} cells × {adata.n_vars} genes → {target} "
            f"({', '.join(f'{label} {n}' for label, n in counts.items())})"
        )
    partial = manifest_path.with_name("manifest.json.partial")
    partial.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    partial.replace(manifest_path)
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.prepare_pairs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--from", dest="mirror", required=True, help="folder of fetched repository snapshots")
    parser.add_argument(
        "--out", default=None, help="the cache (default: $SCQUERY_BENCH_DATA or ~/.cache/...)"
    )
    parser.add_argument("--only", default=None, help="comma-separated dataset names (default: all)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else None
    unknown = sorted(set(names or ()) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    out = Path(args.out) if args.out else cache_dir()
    if Path(args.mirror).resolve() == out.resolve():
        parser.error("--out must not be the snapshot folder --from")
    try:
        prepare(args.mirror, out, names=names)
    except PrepareError as error:
        print(f"prepare_pairs: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
