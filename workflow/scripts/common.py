"""Shared by the workflow's scripts: send everything a job prints to its log file."""

import logging
import os
import sys


def log_to(path):
    """Redirect stdout, stderr (also of TensorFlow's C++ code) and Python logging to `path`."""
    handle = open(path, "w", buffering=1)  # stays open for the whole job
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(handle.fileno(), stream.fileno())
    sys.stdout = sys.stderr = handle
    logging.basicConfig(
        stream=handle, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True
    )
    logging.captureWarnings(True)
