"""scquery: cell embeddings from tied-weight denoising autoencoders and cell-type queries."""

import os
from importlib.metadata import version as _version

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of logs

from .backend import choose_backend  # noqa: E402

choose_backend()  # before any module imports Keras: TensorFlow, else an installed backend

from .errors import ScqueryError  # noqa: E402

__version__ = _version("scquery")

__all__ = ["ScqueryError", "__version__"]
