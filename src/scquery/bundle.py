"""The model bundle: everything needed to process a new dataset exactly like the reference.

A bundle is a folder: `model.keras`, `bundle.json`, `reference.h5ad` (and whatever else is saved
with them, e.g. the neighbour index), plus `manifest.sha256`, the SHA-256 digest of every other
file in the folder, written last when the bundle is saved and checked when it is loaded (it is in
`sha256sum` format: `sha256sum -c manifest.sha256` checks it by hand). A bundle is written beside
its destination and swapped into place whole (`scquery.outputs.replace_folder`).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import keras
import numpy as np

from .classifier import embedding_model
from .config import TrainConfig
from .errors import ScqueryError
from .logs import arrows
from .neighbors import INDEX_FILES, NeighborIndex
from .outputs import (
    BUNDLE_MARKER,
    check_bundle_destination,
    clean_leftovers,
    fsync_folder,
    make_staging,
    replace_folder,
)
from .preflight import FORMAT_VERSION, REFERENCE_FILE, bundle_meta
from .propagate import LABEL_SOURCE, PROPAGATED
from .provenance import current_versions

MODEL_FILE, META_FILE = "model.keras", BUNDLE_MARKER
MANIFEST_FILE = "manifest.sha256"
_CHUNK = 1 << 20


@dataclass(repr=False)
class Bundle:
    """A trained scquery model (`scquery.train`); `bundle.save(path)` writes it, `scquery.load(path)`
    reads it back.

    Attributes:
        model: the Keras classifier; layers `encoder_0 …` (the last one's output is the embedding)
            and `classifier` (softmax over `classes`).
        classes: cell-type names, in the order of the classifier's outputs.
        preprocess: the preprocessing record of `scquery.preprocessing.fit.fit_reference` (genes
            included).
        reference: one row per reference cell: `obs['label']`, `obs['dataset']`, `obsm['X_scquery']`.
        label_key: the reference's label column.
        config: the training options (`TrainConfig.to_dict()`).
        seed: the training seed.
        history: per-stage training curves (`{'pretrain': [...], 'classifier': {...}}`).
        model_id: a digest of the weights and genes, naming this model in outputs.
        versions: versions of the software that trained it.
        index: the reference's neighbour index (`NeighborIndex`), built with the bundle
            (`with_index`) and saved with it; None for a bundle saved without one.
    """

    model: keras.Model
    classes: list[str]
    preprocess: dict
    reference: ad.AnnData
    label_key: str
    config: dict
    seed: int
    history: dict
    model_id: str
    versions: dict = field(default_factory=current_versions)
    index: NeighborIndex | None = field(default=None, repr=False, compare=False)

    @property
    def genes(self) -> list[str]:
        return self.preprocess["genes"]

    @property
    def kept_epoch(self) -> int | None:
        """The classifier's epoch (from 1) whose weights this bundle holds (`kept_epoch`)."""
        return kept_epoch(self.history.get("classifier", {}))

    @property
    def validation_accuracy(self) -> float | None:
        """The classifier's accuracy on its validation cells at the epoch whose weights early
        stopping kept (the model this bundle holds; not the best epoch's accuracy); None where no
        cells were held out."""
        return kept_accuracy(self.history.get("classifier", {}))

    def save(self, path, *, overwrite=False) -> Path:
        """Write the bundle to the folder `path` (`save_bundle`); an existing bundle there is
        replaced only with `overwrite`."""
        return save_bundle(self, path, overwrite=overwrite)

    def __repr__(self):
        widths = [len(self.genes), *self.config.get("hidden_sizes", [])]
        shown = ", ".join(self.classes[:4]) + (", …" if len(self.classes) > 4 else "")
        datasets = self.reference.obs["dataset"].nunique() if "dataset" in self.reference.obs else 1
        classifier = self.history.get("classifier", {})
        epochs = len(classifier.get("loss", []))
        training = f"{len(self.history.get('pretrain', []))} pretraining stages, {epochs} classifier epochs"
        if self.validation_accuracy is not None:
            training += f", validation accuracy {self.validation_accuracy:.1%} (epoch {self.kept_epoch} kept)"
        software = self.versions
        sources = self.reference.obs.get(LABEL_SOURCE)
        n = 0 if sources is None else int((sources.astype(str) == PROPAGATED).sum())
        propagated = f" ({n:,} labelled by the model: obs[{LABEL_SOURCE!r}])" if n else ""
        return "\n".join(
            [
                f"scquery Bundle {self.model_id}: {arrows(widths)} → {len(self.classes)} cell types",
                f"    cell types: {shown}",
                f"    reference: {self.reference.n_obs:,} cells from {datasets} dataset(s), "
                f"labels from obs[{self.label_key!r}]{propagated}",
                f"    trained with seed {self.seed}: {training}",
                f"    scquery {software.get('scquery')}, keras {software.get('keras')} "
                f"({software.get('backend')} {software.get('backend_version')})",
            ]
        )


def trained(bundle: Bundle) -> str:
    """A trained bundle in words, for the line that ends a training run: `486 cells, 765 genes, 10
    cell types, validation accuracy 79.6% (the model kept)`."""
    accuracy = bundle.validation_accuracy
    return (
        f"{bundle.reference.n_obs:,} cells, {len(bundle.genes):,} genes, {len(bundle.classes)} cell types"
        + ("" if accuracy is None else f", validation accuracy {accuracy:.1%} (the model kept)")
    )


def kept_epoch(classifier):
    """The epoch (from 1) whose weights the classifier kept, from its training history: the one
    early stopping restored (`kept_epoch`; in bundles saved before it was recorded, the first of
    least `val_loss`, which early stopping restores), else the last; None without epochs."""
    if "kept_epoch" in classifier:
        return int(classifier["kept_epoch"])
    if classifier.get("val_loss"):
        return int(np.argmin(classifier["val_loss"])) + 1
    return len(classifier.get("loss", [])) or None


def kept_accuracy(classifier):
    """The validation accuracy of the kept epoch (`kept_epoch`), or None without validation cells."""
    accuracy, epoch = classifier.get("val_accuracy"), kept_epoch(classifier)
    return None if not accuracy or epoch is None else float(accuracy[epoch - 1])


def as_bundle(model, data=None, *, call="scq.query(adata, bundle)") -> Bundle:
    """`model` as a `Bundle`: a bundle as it is, a path (str or `os.PathLike`) loaded with
    `load_bundle` (as `scq.load` does); anything else is one `ScqueryError` sentence naming what
    was given, or, where `model` is an AnnData and `data` a bundle, saying they are swapped (`call`:
    the right order)."""
    if isinstance(model, Bundle):
        return model
    if isinstance(model, str | os.PathLike):
        return load_bundle(model)
    if isinstance(model, ad.AnnData) and isinstance(data, Bundle):
        raise ScqueryError(f"The model and the data were given the other way round; call {call}.")
    raise ScqueryError(
        "The model must be a scquery Bundle (from scq.train or scq.load) or the path of a bundle "
        f"folder, got {type(model).__name__}."
    )


def with_index(bundle: Bundle, *, grown_from: NeighborIndex | None = None) -> Bundle:
    """`bundle` with a neighbour index built over its reference (`train` and `extend` make bundles
    so); `grown_from`: an index over the reference's first cells (`extend`'s bundle before), which a
    copy of then takes the other cells where its kind allows (`NeighborIndex.grown`)."""
    index = NeighborIndex.for_reference(bundle.reference, seed=bundle.seed, grown_from=grown_from)
    return dataclasses.replace(bundle, index=index)


def reference_index(bundle: Bundle) -> NeighborIndex:
    """The neighbour index of `bundle.reference`: the one the bundle holds, else (a bundle saved
    without one, or whose reference was changed by hand) one built now and not kept: using a bundle
    never changes it."""
    if bundle.index is not None and bundle.index.indexes(bundle.reference.obsm["X_scquery"]):
        return bundle.index
    return NeighborIndex.for_reference(bundle.reference, seed=bundle.seed)


def model_digest(model, genes) -> str:
    """The model's id: a digest of its genes and weights (12 hexadecimal digits)."""
    digest = hashlib.sha1("\n".join(genes).encode())
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:12]


def save_bundle(bundle: Bundle, path, *, overwrite=False) -> Path:
    """Write `bundle` to the folder `path` and return it.

    The bundle is written beside `path` (a folder `.NAME.scquery-staging-…`), its manifest last,
    then swapped into place in one step; the folder it replaces is removed last, so `path` always
    holds a whole bundle, the old or the new. An existing bundle is replaced only with `overwrite`;
    a folder that is not a bundle (unless empty), a file, or a place inside another bundle is never
    written to (`ScqueryError`, nothing written).
    """
    path = Path(path)
    check_bundle_destination(path, overwrite=overwrite)
    if path.is_dir():
        _refuse_foreign_files(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(path)
        staging = make_staging(path)
    except OSError as error:
        raise ScqueryError(
            f"The model bundle {path} could not be written ({error}); choose another place."
        ) from None
    try:
        bundle.model.save(staging / MODEL_FILE)
        bundle.reference.write_h5ad(staging / REFERENCE_FILE)
        reference_index(bundle).save(staging)
        meta = {
            "format_version": FORMAT_VERSION,
            "model_id": bundle.model_id,
            "versions": bundle.versions,
            "label_key": bundle.label_key,
            "classes": list(bundle.classes),
            "seed": bundle.seed,
            "config": bundle.config,
            "preprocess": bundle.preprocess,
            "history": bundle.history,
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=1))
        write_manifest(staging)
        replace_folder(staging, path)
    except OSError as error:
        raise ScqueryError(
            f"The model bundle {path} could not be written ({error.strerror or error}); check the space "
            "and permissions there (an existing bundle is unchanged)."
        ) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def _refuse_foreign_files(path):
    """Raise `ScqueryError` when the bundle folder `path` holds files scquery did not write there (a
    replacement would remove them)."""
    ours = {MODEL_FILE, META_FILE, REFERENCE_FILE, MANIFEST_FILE, *INDEX_FILES}
    try:
        ours |= read_manifest(path).keys()
    except ScqueryError:
        pass  # a bundle of an older format: its files are the standard ones
    foreign = [name for name in _bundle_files(path) if name not in ours]
    if foreign:
        raise ScqueryError(
            f"The model bundle {path} also holds files scquery did not write ({', '.join(foreign[:3])}), "
            "which replacing it would remove; move them out first, or choose a new folder."
        )


def _file_digest(path, *, sync=False):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def _bundle_files(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    return [p.relative_to(folder).as_posix() for p in files]


def write_manifest(folder):
    """Write `manifest.sha256` (`sha256sum` format) over every other file in `folder`, flushed to disk."""
    folder = Path(folder)
    lines = [f"{_file_digest(folder / name, sync=True)}  {name}\n" for name in _bundle_files(folder)]
    manifest = folder / MANIFEST_FILE
    manifest.write_text("".join(lines))
    with open(manifest, "rb") as handle:
        os.fsync(handle.fileno())
    fsync_folder(folder)


def read_manifest(folder):
    """`{file: digest}` of the bundle `folder`'s manifest; `ScqueryError` when it is missing or damaged."""
    folder = Path(folder)
    try:
        text = (folder / MANIFEST_FILE).read_text()
    except FileNotFoundError:
        raise ScqueryError(
            f"The model bundle {folder} has no {MANIFEST_FILE} (it was written by an older scquery, or "
            "the file was removed); train the model again."
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ScqueryError(
            f"{folder / MANIFEST_FILE} cannot be read ({error}); train the model again."
        ) from None
    entries = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or name.startswith("/") or ".." in Path(name).parts:
            raise ScqueryError(f"{folder / MANIFEST_FILE} is damaged; restore it or train the model again.")
        entries[name] = digest
    if not {MODEL_FILE, META_FILE, REFERENCE_FILE} <= entries.keys():
        raise ScqueryError(f"{folder / MANIFEST_FILE} is damaged; restore it or train the model again.")
    return entries


def verify_bundle(path):
    """Check every file of the bundle `path` against its manifest; any difference is a `ScqueryError`
    naming the file and what to do.

    The files are read once, in 1 MiB pieces (constant memory), on several threads (hashlib
    releases the GIL).
    """
    path = Path(path)
    entries = read_manifest(path)
    for name in entries:
        if not (path / name).is_file():
            raise ScqueryError(
                f"{path / name} is missing from the model bundle {path}; restore it or train the model again."
            )
    with ThreadPoolExecutor(max_workers=min(len(entries), os.cpu_count() or 1)) as pool:
        found = dict(zip(entries, pool.map(_file_digest, [path / name for name in entries]), strict=True))
    for name, digest in entries.items():
        if found[name] != digest:
            raise ScqueryError(_changed(path, name))


def _changed(path, name):
    """The sentence for a bundle file whose digest differs from the manifest's."""
    file = path / name
    if name == MODEL_FILE:
        if not _complete_zip(file):
            return (
                f"{file} is truncated or damaged (not a complete Keras file); copy the bundle "
                f"{path} again whole, or train the model again."
            )
        return (
            f"{file} is not the model this bundle was saved with (another bundle's model?); put the "
            f"bundle's own {MODEL_FILE} back, or train the model again."
        )
    if name == META_FILE:
        return (
            f"{file} was changed after the bundle was saved (its genes, classes or settings no longer "
            "match the model); restore it, or train the model again."
        )
    if name == REFERENCE_FILE:
        return (
            f"{file} was changed after the bundle was saved (the reference cells no longer match the "
            "model); restore it, or train the model again (`scquery extend` adds cells safely)."
        )
    return (
        f"{file} differs from the one saved in the bundle {path} ({MANIFEST_FILE}); restore it, or "
        "train the model again."
    )


def _complete_zip(file):
    try:
        with zipfile.ZipFile(file) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def load_bundle(path, *, verify=True) -> Bundle:
    """Read a bundle written by `save_bundle`; a bundle this version cannot read fails clearly.

    With `verify` (the default), every file is first checked against the bundle's manifest
    (`verify_bundle`); in any case the model must match the bundle's genes, classes, `model_id` and
    reference. Each problem is one `ScqueryError` sentence naming the file and what to do.
    """
    path = Path(path)
    clean_leftovers(path)  # puts back a bundle whose replacement was killed half-way
    meta = bundle_meta(path)
    meta_file = path / META_FILE
    if verify:
        verify_bundle(path)
    missing = [key for key in ("model_id", "classes", "preprocess", "label_key") if key not in meta]
    if missing or "genes" not in meta.get("preprocess", {}):
        raise ScqueryError(
            f"{meta_file} lacks {', '.join(missing) or 'the genes'}; restore it or train the model again."
        )
    model = _load_model(path)
    try:
        reference = ad.read_h5ad(path / REFERENCE_FILE)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ScqueryError(
            f"{path / REFERENCE_FILE} cannot be read ({error}); restore it or train the model again."
        ) from None
    bundle = Bundle(
        model=model,
        classes=meta["classes"],
        preprocess=meta["preprocess"],
        reference=reference,
        label_key=meta["label_key"],
        config=meta.get("config", {}),
        seed=meta.get("seed", TrainConfig().seed),
        history=meta.get("history", {}),
        model_id=meta["model_id"],
        versions=meta.get("versions", {}),
    )
    check_consistent(bundle, path)
    bundle.index = NeighborIndex.load(path, reference.obsm["X_scquery"])
    return bundle


def _load_model(path):
    file = path / MODEL_FILE
    if not _complete_zip(file):
        raise ScqueryError(
            f"{file} is missing, truncated or damaged (not a complete Keras file); copy the bundle "
            f"{path} again whole, or train the model again."
        )
    try:
        return keras.saving.load_model(file, safe_mode=True)
    except Exception as error:  # Keras raises many kinds for a file it cannot rebuild
        raise ScqueryError(
            f"{file} cannot be loaded as a scquery model ({type(error).__name__}); train the model again."
        ) from None


def check_consistent(bundle: Bundle, path="the bundle"):
    """Raise `ScqueryError` unless the model fits the bundle's genes, classes, `model_id` and reference."""
    model, genes = bundle.model, bundle.genes
    n_inputs, n_outputs = model.input_shape[-1], model.output_shape[-1]
    if n_inputs != len(genes) or n_outputs != len(bundle.classes):
        raise ScqueryError(
            f"The model of {path} takes {n_inputs} genes and gives {n_outputs} classes, but its "
            f"{META_FILE} lists {len(genes)} genes and {len(bundle.classes)} classes; the files come from "
            "different bundles: train the model again."
        )
    if model_digest(model, genes) != bundle.model_id:
        raise ScqueryError(
            f"The model of {path} does not match the model_id {bundle.model_id} of its {META_FILE} (its "
            "weights or genes differ); the files come from different bundles: train the model again."
        )
    reference = bundle.reference
    embedding = reference.obsm.get("X_scquery") if hasattr(reference, "obsm") else None
    width = embedding_model(model).output.shape[-1]
    if (
        embedding is None
        or not {"label", "dataset"} <= set(reference.obs.columns)
        or embedding.shape[1] != width
    ):
        raise ScqueryError(
            f"The reference of {path} does not fit its model (it needs obs 'label' and 'dataset' and "
            f"obsm 'X_scquery' of width {width}); train the model again."
        )
