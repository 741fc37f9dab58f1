"""Safe outputs: where results may go, how a folder is replaced whole, and the leftovers of killed runs.

Promises (README, "What scquery promises"): an output is never an input, another output, or a file
inside a model bundle; an existing output is replaced only when asked (`overwrite`), and a folder
is replaced only when it is a model bundle. Everything is written beside its destination under a
name of our own, `.NAME.scquery-KIND-PID-RANDOM` (KIND: `staging` for a folder being written,
`old` for a replaced folder on the way out, `tmp` for a file), then renamed into place; such
leftovers of a process that no longer runs are removed by the next write to the same path.
"""

import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import ScqueryError

#: The file that makes a folder a model bundle (`scquery.bundle.META_FILE`).
BUNDLE_MARKER = "bundle.json"
#: The names of the tables scquery writes (`write_table`): tab- or comma-separated, gzipped or not.
TABLES = (".tsv", ".tsv.gz", ".csv", ".csv.gz")
#: Suffixes of files, which a model bundle (a folder) is not named with.
FILE_SUFFIXES = (".h5ad", ".h5", ".loom", ".csv", ".tsv", ".txt", ".gz", ".json", ".keras", ".npz", ".zip")
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.scquery-(?P<kind>staging|old|tmp)-(?P<pid>\d+)-[^/]+$")


def enclosing_bundle(path):
    """The model bundle folder holding `path` (or being `path`), or None."""
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        if (folder / BUNDLE_MARKER).is_file():
            return folder
    return None


def staging_prefix(path, kind):
    """The name prefix of our temporary `kind` (`staging`, `old`, `tmp`) beside `path`."""
    return f".{Path(path).name}.scquery-{kind}-{os.getpid()}-"


def make_staging(path, kind="staging"):
    """A new empty folder beside `path` named as our own (`staging_prefix`), following the umask."""
    path = Path(path)
    folder = Path(tempfile.mkdtemp(prefix=staging_prefix(path, kind), dir=path.parent))
    folder.chmod(0o777 & ~current_umask())
    return folder


def current_umask():
    """The process's umask (read by setting it and setting it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _running(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(path):
    """Remove the leftovers of killed runs that wrote `path` (ours by name, their process gone).

    When `path` itself is missing and a killed run left the replaced folder on its way out (`old`:
    only where the file system cannot swap two folders at once), that folder is renamed back.
    """
    path = Path(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:  # missing or unreadable: nothing of ours to clean there
        return
    leftovers = []
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match and match["name"] == path.name and not _running(int(match["pid"])):
            leftovers.append((match["kind"], entry))
    old = sorted((e for kind, e in leftovers if kind == "old"), key=lambda e: e.stat().st_mtime)
    try:
        if old and not os.path.lexists(path) and (old[-1] / BUNDLE_MARKER).is_file():
            os.rename(old[-1], path)
            leftovers = [(kind, e) for kind, e in leftovers if e != old[-1]]
        for _, entry in leftovers:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    except OSError:  # a folder we may not change: the leftovers stay (they are hidden and harmless)
        pass


def _exchange(first, second):
    """Swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def fsync_folder(folder):
    """Flush a folder's entries (renames into it) to disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_folder(staging, path):
    """Put the complete folder `staging` at `path`, replacing what is there, so that at every moment
    `path` holds either the old folder or the new one whole; the old one is removed last."""
    staging, path = Path(staging), Path(path)
    if os.path.lexists(path) and _exchange(staging, path):
        fsync_folder(path.parent)
        shutil.rmtree(staging)  # now the old folder
        return
    if os.path.lexists(path):
        old = make_staging(path, "old")
        os.rename(path, old)  # replaces the empty folder `old`
        try:
            os.rename(staging, path)
        except BaseException:
            os.rename(old, path)  # the old folder back in place (a killed run's is put back on next use)
            raise
        fsync_folder(path.parent)
        shutil.rmtree(old)
        return
    os.rename(staging, path)
    fsync_folder(path.parent)


def check_bundle_destination(path, *, overwrite=False):
    """Raise `ScqueryError` unless a model bundle may be written to the folder `path`.

    It may when `path` does not exist or is an empty folder, or, with `overwrite`, holds a model
    bundle; never inside another bundle, and never over a file or a folder of other things.
    """
    path = Path(path)
    outer = enclosing_bundle(path.parent)
    if outer is not None:
        raise ScqueryError(
            f"{path} is inside the model bundle {outer}; write the new bundle to a folder outside it."
        )
    if not os.path.lexists(path):
        return
    if not path.is_dir() or path.is_symlink():
        raise ScqueryError(f"{path} exists and is not a folder; choose a new folder for the model bundle.")
    if (path / BUNDLE_MARKER).is_file():
        if not overwrite:
            raise ScqueryError(
                f"{path} already holds a model bundle; give overwrite=True to replace it, "
                "or choose a new folder."
            )
        return
    if any(path.iterdir()):
        raise ScqueryError(
            f"{path} is a folder of other files, not a scquery model bundle, and scquery replaces only "
            "its own bundles; choose a new folder (nothing was written)."
        )


def check_file_destination(path, *, overwrite=True):
    """Raise `ScqueryError` unless a result file may be written to `path`: not a folder, not inside a
    model bundle, in a writable folder, and (without `overwrite`) not an existing file."""
    path = Path(path)
    bundle = enclosing_bundle(path)
    if bundle is not None:
        raise ScqueryError(
            f"{path} is inside the model bundle {bundle}, which holds only what scquery saved there; "
            "write it elsewhere."
        )
    if path.is_dir():
        raise ScqueryError(f"{path} is a folder; give a file name for the output (e.g. {path / 'out.h5ad'}).")
    if os.path.lexists(path):
        if not overwrite:
            raise ScqueryError(f"{path} exists; give --overwrite to replace it, or choose another name.")
        if not os.access(path, os.W_OK):
            raise ScqueryError(f"{path} is read-only; make it writable or choose another name.")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ScqueryError(f"{folder} is a file, so {path} cannot be written; choose another place.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ScqueryError(
            f"The folder {folder} is not writable, so {path} cannot be written; choose another place."
        )


def _same(first, second):
    first, second = Path(first), Path(second)
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return Path(os.path.abspath(first)) == Path(os.path.abspath(second))


def _within(path, folder):
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def check_outputs(outputs, inputs=(), *, folders=(), overwrite=False, suffixes=None):
    """Raise `ScqueryError` unless the `outputs` (option → path; `folders` names the options that
    are bundle folders) may be written: each different from every input and every other output, no
    input inside a bundle folder being written, named as what it is (a file with one of its
    option's `suffixes`, a folder without a file's suffix), in a folder that exists (the command line
    creates no folder the user did not name), and each destination fit (`check_*_destination`)."""
    outputs = {option: path for option, path in outputs.items() if path is not None}
    seen = {}
    for option, path in outputs.items():
        for given in inputs:
            if _same(path, given) or (option in folders and _within(given, path)):
                what = "is" if _same(path, given) else "holds"
                raise ScqueryError(
                    f"{option} {path} {what} the input {given}, which scquery never overwrites; "
                    "choose another output path."
                )
        for other, other_path in seen.items():
            if _same(path, other_path):
                raise ScqueryError(f"{option} and {other} are both {path}; give each output its own path.")
        seen[option] = path
        _check_name(option, path, folder=option in folders, suffixes=(suffixes or {}).get(option))
        parent = Path(os.path.abspath(path)).parent
        if not parent.exists():
            raise ScqueryError(
                f"The folder {parent} does not exist, so {option} {path} cannot be written; create it "
                f"first (mkdir -p {parent}) or choose a folder that exists (nothing was written)."
            )
        if option in folders:
            check_bundle_destination(path, overwrite=overwrite)
        else:
            check_file_destination(path, overwrite=overwrite)


def _check_name(option, path, *, folder, suffixes):
    """Refuse an output named as something it is not: a model bundle (a `folder`) named with a
    file's suffix, or a file without one of its `suffixes` (None: any name). A file where a folder is
    asked for, or the reverse, is left to `check_*_destination`, which says so."""
    name = Path(path).name.lower()
    if folder and name.endswith(FILE_SUFFIXES) and not os.path.isfile(path):
        raise ScqueryError(
            f"{option} {path} is named like a file, but a model bundle is a folder; give a folder "
            f"name without {Path(path).suffix}."
        )
    if not folder and suffixes is not None and not name.endswith(tuple(suffixes)) and not os.path.isdir(path):
        either = ", ".join(suffixes[:-1]) + " or " + suffixes[-1] if len(suffixes) > 1 else suffixes[0]
        raise ScqueryError(
            f"{option} {path}: scquery writes {option} as {either} only; give a name ending in "
            + ("one of them." if len(suffixes) > 1 else f"{suffixes[0]}.")
        )


def write_atomically(path, write):
    """Call `write(tmp)` on a temporary file beside `path` (named as ours, see `staging_prefix`),
    then rename it to `path`.

    A failed write leaves no partial file behind; leftovers of killed runs are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=staging_prefix(path, "tmp"))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_result(path, write):
    """`write_atomically` for a user's result: refused inside a bundle or onto a folder, and a
    failure of the file system (read-only, full) is one sentence."""
    check_file_destination(path)
    try:
        write_atomically(path, write)
    except OSError as error:
        raise ScqueryError(
            f"{path} could not be written ({error.strerror or error}); check the space and the "
            "permissions there (nothing was written)."
        ) from None


def write_h5ad(adata, path):
    """Write `adata` to `path` atomically (a temporary file in the same folder, then rename)."""
    _write_result(path, adata.write_h5ad)


def write_table(table, path):
    """Write a pandas table to `path`, atomically: comma-separated where the name ends in .csv or
    .csv.gz, else tab-separated; gzipped where it ends in .gz."""
    name = str(path).lower()
    sep = "," if name.removesuffix(".gz").endswith(".csv") else "\t"
    compression = "gzip" if name.endswith(".gz") else None
    _write_result(path, lambda tmp: table.to_csv(tmp, sep=sep, index=False, compression=compression))
