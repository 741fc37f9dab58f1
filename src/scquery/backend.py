"""Which Keras backend scquery runs on, chosen before Keras is first imported.

Keras runs on the backend named by `KERAS_BACKEND`, else by its configuration file (`keras.json`),
else on TensorFlow. scquery installs its backend as an extra (`scquery[tensorflow]`, the default,
`scquery[jax]` or `scquery[torch]`), so the backend Keras would pick may be absent: then, with
`KERAS_BACKEND` unset, the first installed of TensorFlow, JAX and PyTorch is used instead.
"""

import json
import os
from importlib.util import find_spec

#: Backends in order of preference; each one's name is also the module that provides it.
PREFERENCE = ("tensorflow", "jax", "torch")


def configured_backend():
    """The backend Keras will use: `KERAS_BACKEND`, else `keras.json`'s, else 'tensorflow'."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME")
    if home is None:  # where Keras itself looks without KERAS_HOME
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as handle:
            return json.load(handle).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def choose_backend():
    """Set `KERAS_BACKEND` to an installed backend when the one Keras would use is not installed.

    A backend the user named in `KERAS_BACKEND` is never changed. Returns the backend Keras will use.
    Raises ImportError, saying what to install, when no backend is installed at all.
    """
    backend = configured_backend()
    if os.environ.get("KERAS_BACKEND") or find_spec(backend) is not None:
        return backend
    installed = [name for name in PREFERENCE if find_spec(name) is not None]
    if not installed:
        raise ImportError(
            f"scquery needs a Keras backend, and {backend} (the one Keras would use) is not installed; "
            "install one with pip install 'scquery[tensorflow]' (the default), 'scquery[jax]' or "
            "'scquery[torch]'."
        )
    os.environ["KERAS_BACKEND"] = installed[0]
    return installed[0]
