"""scquery: cell embeddings from tied-weight denoising autoencoders, and cell-type queries.

    import scquery as scq

    reference = scq.read(["ref1.h5ad", "ref2.h5ad"])
    bundle = scq.train(reference, label_key="cell_type", layer="counts")  # a Bundle: bundle.save("model")
    scq.query(adata, scq.load("model"))  # obs['scquery_prediction'], obsm['X_scquery'], ...
    scq.score(adata, "cell_type")  # accuracy, macro-F1, share Unknown against known types
    scq.pl.umap(adata, color=["scquery_prediction", "cell_type"])

Progress goes to the `scquery` logger (silent until the application sets up logging) and, while
training where someone watches, to progress bars.
"""

from importlib.metadata import version as _version

from .backend import choose_backend
from .logs import import_backend as _import_backend

choose_backend()  # before any module imports Keras: TensorFlow, else an installed backend
_import_backend()  # and before anything else imports TensorFlow: its start-up chatter is held back

from . import plotting as pl  # noqa: E402
from .bundle import Bundle  # noqa: E402
from .bundle import load_bundle as load  # noqa: E402
from .embed import embed  # noqa: E402
from .errors import ScqueryError  # noqa: E402
from .evaluate import score  # noqa: E402
from .io import read_many as read  # noqa: E402
from .query import extend, query, summarize  # noqa: E402
from .train import train  # noqa: E402

__version__ = _version("scquery")

__all__ = [
    "Bundle",
    "ScqueryError",
    "__version__",
    "embed",
    "extend",
    "load",
    "pl",
    "query",
    "read",
    "score",
    "summarize",
    "train",
]
