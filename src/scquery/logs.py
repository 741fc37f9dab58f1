"""What scquery tells its user: the `scquery` logger, a quiet backend start-up, and progress modes.

The package writes only to the `scquery` logger, which has a `NullHandler`: nothing is printed unless
the application sets up logging (the command line does, with `log_to_stderr`; the workflow's scripts
send everything to their log files). The package never configures the root logger; `quiet_others`
keeps the chatter of the libraries it uses (faiss's loader, anndata) out of an application's INFO log.

TensorFlow writes a few lines of C++ start-up chatter (oneDNN, CUDA drivers, absl) straight to the
stderr file descriptor while it is imported, before any setting can stop them. `import scquery`
stays light (no Keras) and calls `hold_back_backend_startup`: wherever Keras is first imported
afterwards (by scquery's modules or the user), those lines are held back; `TF_CPP_MIN_LOG_LEVEL`
(default here: 3) keeps the later C++ messages out. Set it to 0, and use `-vv`, to see them all.
"""

import contextlib
import functools
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile

logger = logging.getLogger("scquery")
logger.addHandler(logging.NullHandler())

#: What the backend wrote to stderr while Keras was first imported.
backend_startup = ""


#: Libraries whose INFO lines are chatter to a scquery user: faiss's loader trying each CPU build
#: (`ModuleNotFoundError` lines that look like failures), anndata's "storing … as categorical".
QUIET_LIBRARIES = ("faiss", "anndata")


def quiet_others(level=logging.WARNING):
    """Show only `level` and above from `QUIET_LIBRARIES` (those whose level nobody has set), so an
    application logging at INFO (`logging.basicConfig(level="INFO")`, the workflow's log files) sees
    scquery's stages, not their chatter. `log_to_stderr(2)` and `level=logging.NOTSET` let it back in."""
    for name in QUIET_LIBRARIES:
        other = logging.getLogger(name)
        if other.level in (logging.NOTSET, logging.WARNING):
            other.setLevel(level)


def hold_back_backend_startup():
    """From now on, the first import of Keras (and of the backend it imports), wherever it happens,
    holds back what is written meanwhile to stderr: it goes to the `scquery` logger at DEBUG level,
    or back to stderr if the import fails."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" not in sys.modules and not any(isinstance(f, _KerasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _KerasFinder())


class _KerasFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands the real spec of `keras` back with its loading held back."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # once, and not for the search just below
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _HeldBackLoader(spec.loader)
        return spec


class _HeldBackLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # resources and the like: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        global backend_startup
        with _held_back_stderr() as held:
            try:
                self.loader.exec_module(module)
            except BaseException:
                held.replay = True
                raise
        backend_startup = held.text
        _log_backend_startup()


def _log_backend_startup():
    for line in backend_startup.splitlines():
        logger.debug("backend: %s", line)


class _Held:
    text, replay = "", False


@contextlib.contextmanager
def _held_back_stderr():
    """Send the stderr file descriptor to a temporary file for the block (`held.text` after it);
    with `held.replay` set, the text is written back to stderr."""
    held = _Held()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to hold back
        yield held
        return
    with tempfile.TemporaryFile() as buffer:
        _flush_stderr()
        os.dup2(buffer.fileno(), 2)
        try:
            yield held
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            buffer.seek(0)
            held.text = buffer.read().decode(errors="replace")
            if held.replay:
                os.write(2, held.text.encode())


def _flush_stderr():
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()


class _NoRetracingWarnings(logging.Filter):
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def without_retracing_warnings(function):
    """Decorator: TensorFlow's warnings that functions were traced again are dropped while `function`
    runs (training builds a model per stage, and an epoch's last batch may be smaller: expected)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        drop = _NoRetracingWarnings()
        logging.getLogger("tensorflow").addFilter(drop)
        try:
            return function(*args, **kwargs)
        finally:
            logging.getLogger("tensorflow").removeFilter(drop)

    return wrapper


def log_to_stderr(verbosity=0):
    """Print the `scquery` logger's messages on stderr, as `scquery: …` (for applications).

    `verbosity` -1: warnings and errors only; 0: stages and results; 1: details too; 2: also the
    backend's start-up lines and the TensorFlow and absl loggers' warnings, otherwise hidden.

    Returns:
        A function that undoes these settings.
    """
    quieted = [] if verbosity >= 2 else [logging.getLogger(name) for name in ("tensorflow", "absl")]
    if verbosity >= 2:
        quiet_others(logging.NOTSET)
    saved = [(logger, logger.level, logger.propagate)] + [
        (other, other.level, other.propagate) for other in quieted
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("scquery: %(message)s"))
    if verbosity < 2:  # the backend's start-up lines, logged when Keras is first imported
        handler.addFilter(lambda record: not record.getMessage().startswith("backend: "))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG)
    logger.propagate = False
    for other in quieted:
        other.setLevel(logging.ERROR)
    if verbosity >= 2:
        _log_backend_startup()

    def restore():
        logger.removeHandler(handler)
        for each, level, propagate in saved:
            each.setLevel(level)
            each.propagate = propagate

    return restore


#: The task running now (`stages`): its stage names and progress bar (or None), or nothing.
_TASKS = []


@contextlib.contextmanager
def stages(task, names, *, verbose="auto"):
    """Run a task of the stages `names` (the command line's query: reading, embedding, neighbours,
    clusters, writing): with `verbose` 1 (`resolve_verbose`: 'auto' is a bar where someone watches)
    a progress bar over the stages names the one `stage` announced last, and log lines print above
    it."""
    bar = None
    if resolve_verbose(verbose) == 1:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        bar = tqdm(
            total=len(names),
            desc=task,
            bar_format="{desc} {bar:30} {n_fmt}/{total_fmt} stages{postfix} [{elapsed}]",
            leave=False,
        )
    _TASKS.append((list(names), bar))
    try:
        if bar is None:
            yield
        else:
            with logging_redirect_tqdm([logger]):
                yield
    finally:
        _TASKS.pop()
        if bar is not None:
            bar.close()


def stage(name, message, *args):
    """Announce the stage `name` of the running task (`stages`): `message % args` at INFO on the
    `scquery` logger, and the task's bar moves on to it."""
    logger.info(message, *args)
    if _TASKS and _TASKS[-1][1] is not None and name in _TASKS[-1][0]:
        names, bar = _TASKS[-1]
        bar.n = names.index(name)
        bar.set_postfix_str(name, refresh=False)
        bar.refresh()


def arrows(widths):
    """Layer widths as `2,000 → 500 → 100`."""
    return " → ".join(f"{int(w):,}" for w in widths)


def resolve_verbose(verbose):
    """Keras-style `verbose` for training: 0 silent, 1 a progress bar, 2 one log line per epoch.

    `'auto'` is a bar where someone watches (stderr a terminal, or a Jupyter kernel), else lines.
    """
    if verbose != "auto":
        return int(verbose)
    interactive = "ipykernel" in sys.modules or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return 1 if interactive else 2
