"""scquery: cell embeddings from tied-weight denoising autoencoders, and cell-type queries.

    import scquery as scq

    reference = scq.read(["ref1.h5ad", "ref2.h5ad"])
    bundle = scq.train(reference, label_key="cell_type", layer="counts")  # a Bundle: bundle.save("model")
    scq.query(adata, scq.load("model"))  # obs['scquery_prediction'], obsm['X_scquery'], ...
    scq.score(adata, "cell_type")  # accuracy, macro-F1, share Unknown against known types
    scq.pl.umap(adata, color=["scquery_prediction", "cell_type"])

Progress goes to the `scquery` logger (silent until the application sets up logging) and, while
training where someone watches, to progress bars.

`import scquery` is light (no Keras, scanpy or faiss): the short API's names load their modules on
first use (PEP 562, as in scanpy and anndata). The Keras backend is chosen here, before anything can
import Keras, and wherever Keras is first imported its backend's start-up chatter is held back.
"""

import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .backend import choose_backend
from .errors import ScqueryError
from .logs import hold_back_backend_startup, quiet_others

choose_backend()  # before any module imports Keras: TensorFlow, else an installed backend
hold_back_backend_startup()  # and wherever Keras is first imported, its start-up chatter is held back
quiet_others()  # faiss's and anndata's INFO chatter stays out of applications' INFO logs

try:
    __version__ = _version("scquery")
except PackageNotFoundError:  # run from its source tree, not installed (PYTHONPATH=src: docs/SCALING.md)
    __version__ = "0+source"

#: The short API, loaded on first use: name -> (module, attribute; None for the module itself).
_LAZY = {
    "Bundle": ("bundle", "Bundle"),
    "embed": ("embed", "embed"),
    "extend": ("extend", "extend"),
    "load": ("bundle", "load_bundle"),
    "pl": ("plotting", None),
    "query": ("query", "query"),
    "read": ("io", "read_many"),
    "score": ("evaluate", "score"),
    "summarize": ("evaluate", "summarize"),
    "train": ("train", "train"),
}

__all__ = ["ScqueryError", "__version__", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    setattr(sys.modules[__name__], name, value)
    return value


def __dir__():
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """`scquery.train`, `.embed` and `.query` are the functions, although modules share their names:
    when Python sets a package attribute to the module it has just imported (`from scquery.train
    import …`), the function of that name is kept instead."""

    def __setattr__(self, name, value):
        if _LAZY.get(name, (None, None))[1] == name and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
