"""The model bundle: everything needed to process a new dataset exactly like the reference."""

import json
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import keras

from .errors import ScqueryError
from .io import current_umask
from .neighbors import NeighborIndex

FORMAT_VERSION = 1
MODEL_FILE, META_FILE, REFERENCE_FILE = "model.keras", "bundle.json", "reference.h5ad"


def current_versions() -> dict:
    """Versions of the software that writes a bundle."""
    return {
        "scquery": version("scquery"),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "backend_version": version(_BACKEND_PACKAGES[keras.backend.backend()]),
        "anndata": version("anndata"),
        "scanpy": version("scanpy"),
        "python": platform.python_version(),
    }


_BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}


@dataclass
class Bundle:
    """A trained scquery model.

    Attributes:
        model: the Keras classifier; layers `encoder_0 …` (the last one's output is the embedding)
            and `classifier` (softmax over `classes`).
        classes: cell-type names, in the order of the classifier's outputs.
        preprocess: the preprocessing record of `scquery.preprocess.fit_preprocess` (genes included).
        reference: one row per reference cell: `obs['label']`, `obs['dataset']`, `obsm['X_scquery']`.
        label_key: the reference's label column.
        config: the training options (`TrainConfig.to_dict()`).
        seed: the training seed.
        history: per-stage training curves (`{'pretrain': [...], 'classifier': {...}}`).
        model_id: a digest of the weights and genes, naming this model in outputs.
        versions: versions of the software that trained it.
        index: the reference's neighbour index (`NeighborIndex`), saved with the bundle; None until
            `NeighborIndex.for_bundle` builds it (`save_bundle` does).
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


def save_bundle(bundle: Bundle, path) -> Path:
    """Write `bundle` to the directory `path`, replacing it whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staging.chmod(0o777 & ~current_umask())
    try:
        bundle.model.save(staging / MODEL_FILE)
        bundle.reference.write_h5ad(staging / REFERENCE_FILE)
        NeighborIndex.for_bundle(bundle).save(staging)
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
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_bundle(path) -> Bundle:
    """Read a bundle written by `save_bundle`; a bundle this version cannot read fails clearly."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ScqueryError(
            f"{path} is not a scquery model bundle (no {META_FILE}); give the folder `scquery train` wrote."
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        raise ScqueryError(f"{meta_file} is damaged (not JSON); train the model again.") from None
    found = meta.get("format_version")
    if found != FORMAT_VERSION:
        raise ScqueryError(
            f"{path} is a bundle of format {found}, and this scquery "
            f"({version('scquery')}) reads format {FORMAT_VERSION}; use a matching scquery version."
        )
    try:
        model = keras.saving.load_model(path / MODEL_FILE, safe_mode=True)
        reference = ad.read_h5ad(path / REFERENCE_FILE)
        index = NeighborIndex.load(path, reference.obsm["X_scquery"])
    except (OSError, ValueError) as error:
        raise ScqueryError(f"{path} could not be read ({error}); train the model again.") from None
    return Bundle(
        model=model,
        classes=meta["classes"],
        preprocess=meta["preprocess"],
        reference=reference,
        label_key=meta["label_key"],
        config=meta["config"],
        seed=meta["seed"],
        history=meta["history"],
        model_id=meta["model_id"],
        versions=meta["versions"],
        index=index,
    )
