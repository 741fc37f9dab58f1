"""scquery.outputs on plain folders (no model: fast): where outputs may go, our staging names, the
leftovers of dead runs, and the folder swap, failed or killed at each of its steps."""

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from faults import KILLED, Injector, die_at_step, fail_step

import scquery.outputs as outputs
from scquery.errors import ScqueryError
from scquery.outputs import (
    BUNDLE_MARKER,
    check_bundle_destination,
    check_file_destination,
    check_outputs,
    clean_leftovers,
    current_umask,
    enclosing_bundle,
    fsync_folder,
    make_staging,
    replace_folder,
    staging_prefix,
)

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def make_bundle(folder, content):
    """A folder that looks like a bundle: its marker and two files holding `content`."""
    folder = Path(folder)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / BUNDLE_MARKER).write_text(content)
    (folder / "data.bin").write_text(content * 3)
    (folder / "sub" / "part").write_text(content + "!")
    return folder


def bundle_content(folder):
    """The `content` of a whole bundle made by `make_bundle`; fails when it is not whole."""
    folder = Path(folder)
    content = (folder / BUNDLE_MARKER).read_text()
    assert (folder / "data.bin").read_text() == content * 3
    assert (folder / "sub" / "part").read_text() == content + "!"
    assert sorted(p.name for p in folder.iterdir()) == [BUNDLE_MARKER, "data.bin", "sub"]
    return content


# Bundles and staging names.


def test_enclosing_bundle_finds_the_folder_holding_the_marker(tmp_path):
    bundle = make_bundle(tmp_path / "model", "x")
    assert enclosing_bundle(bundle) == bundle
    assert enclosing_bundle(bundle / "sub" / "part") == bundle
    assert enclosing_bundle(bundle / "missing" / "deeper") == bundle
    assert enclosing_bundle(tmp_path / "other") is None
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / BUNDLE_MARKER).mkdir()  # a folder named like the marker is no bundle
    assert enclosing_bundle(tmp_path / "folder" / "x") is None


def test_staging_names_are_ours_and_follow_the_umask(tmp_path):
    assert staging_prefix(tmp_path / "model", "old") == f".model.scquery-old-{os.getpid()}-"
    assert staging_prefix("a/b/out.h5ad", "tmp") == f".out.h5ad.scquery-tmp-{os.getpid()}-"
    previous = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and current_umask() == 0o027  # read without changing it
        folder = make_staging(tmp_path / "model")
    finally:
        os.umask(previous)
    assert folder.parent == tmp_path and folder.is_dir() and not any(folder.iterdir())
    assert folder.name.startswith(f".model.scquery-staging-{os.getpid()}-")
    assert outputs._LEFTOVER.match(folder.name)["kind"] == "staging"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert make_staging(tmp_path / "model", "old").name.startswith(f".model.scquery-old-{os.getpid()}-")


def test_leftover_names_are_recognized_exactly():
    match = outputs._LEFTOVER.match(".my.model.scquery-staging-123-abc")
    assert (match["name"], match["kind"], match["pid"]) == ("my.model", "staging", "123")
    assert outputs._LEFTOVER.match(".out.h5ad.scquery-tmp-9-x")["kind"] == "tmp"
    for name in (
        "model.scquery-staging-1-x",
        ".model.scquery-other-1-x",
        ".model.scquery-old-x-1",
        ".m.scquery-old-1-",
    ):
        assert outputs._LEFTOVER.match(name) is None, name


def test_running_tells_live_processes_from_ended_ones(alive, monkeypatch):
    assert outputs._running(os.getpid())
    assert not outputs._running(dead_pid())
    assert outputs._running(alive)

    def not_ours(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_ours)  # another user's process
    assert outputs._running(alive)


# Leftovers of dead runs.


@pytest.fixture
def alive():
    """The id of a process that runs while the test does (never signalled: only asked about)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child.pid
    assert child.poll() is None, "the live process was signalled"
    child.kill()
    child.wait()


def test_leftovers_of_dead_runs_are_removed_and_others_kept(tmp_path, alive):
    dead = dead_pid()
    target = make_bundle(tmp_path / "model", "current")
    stale = make_bundle(tmp_path / f".model.scquery-staging-{dead}-a", "half")
    stale_old = make_bundle(tmp_path / f".model.scquery-old-{dead}-b", "older")
    stale_file = tmp_path / f".model.scquery-tmp-{dead}-c"
    stale_file.write_text("half")
    live = make_bundle(tmp_path / f".model.scquery-staging-{alive}-d", "live")
    other_name = make_bundle(tmp_path / f".other.scquery-staging-{dead}-e", "other")
    mine = tmp_path / ".model.mine"
    mine.mkdir()
    clean_leftovers(target)
    assert not stale.exists() and not stale_old.exists() and not stale_file.exists()
    assert live.exists() and other_name.exists() and mine.exists()
    assert bundle_content(target) == "current"


def test_a_folder_on_its_way_out_is_put_back_when_the_bundle_is_missing(tmp_path):
    dead = dead_pid()
    older = make_bundle(tmp_path / f".model.scquery-old-{dead}-b", "older")
    os.utime(older, (1_000_000, 1_000_000))
    newer = make_bundle(tmp_path / f".model.scquery-old-{dead}-a", "newer")
    staging = make_bundle(tmp_path / f".model.scquery-staging-{dead}-c", "half")
    clean_leftovers(tmp_path / "model")
    assert bundle_content(tmp_path / "model") == "newer"  # the latest one out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not newer.exists() and not older.exists() and not staging.exists()


def test_a_folder_on_its_way_out_is_not_put_back_over_something_or_without_its_marker(tmp_path):
    dead = dead_pid()
    old = make_bundle(tmp_path / f".model.scquery-old-{dead}-a", "older")
    (old / BUNDLE_MARKER).unlink()  # not a whole bundle
    clean_leftovers(tmp_path / "model")
    assert not (tmp_path / "model").exists() and not old.exists()
    (tmp_path / "model").write_text("a file of the user's")
    old = make_bundle(tmp_path / f".model.scquery-old-{dead}-b", "older")
    clean_leftovers(tmp_path / "model")
    assert (tmp_path / "model").read_text() == "a file of the user's" and not old.exists()
    live_old = make_bundle(tmp_path / f".other.scquery-old-{os.getpid()}-c", "live")
    clean_leftovers(tmp_path / "other")  # a live run's folder on its way out: left to that run
    assert not (tmp_path / "other").exists() and live_old.exists()


def test_cleaning_beside_a_missing_folder_does_nothing(tmp_path):
    clean_leftovers(tmp_path / "missing" / "model")
    assert list(tmp_path.iterdir()) == []


# The swap.


def _can_exchange(folder):
    """Whether the file system of `folder` swaps two folders in one step (asked of the C library)."""
    import ctypes

    (folder / "probe_a").mkdir()
    (folder / "probe_b").mkdir()
    renameat2 = ctypes.CDLL(None).renameat2
    done = renameat2(-100, bytes(folder / "probe_a"), -100, bytes(folder / "probe_b"), 2) == 0
    (folder / "probe_a").rmdir()
    (folder / "probe_b").rmdir()
    return done


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_exchange_swaps_two_folders_in_one_step(tmp_path, monkeypatch):
    if not _can_exchange(tmp_path):
        pytest.skip("this file system cannot swap two folders in one step")
    first, second = make_bundle(tmp_path / "a", "first"), make_bundle(tmp_path / "b", "second")
    assert outputs._exchange(first, second) is True
    assert bundle_content(first) == "second" and bundle_content(second) == "first"
    monkeypatch.chdir(tmp_path)  # relative paths: from the current folder
    assert outputs._exchange("a", "b") is True
    assert bundle_content(first) == "first" and bundle_content(second) == "second"
    import ctypes

    ctypes.set_errno(0)
    with pytest.raises(FileNotFoundError) as raised:
        outputs._exchange(first, tmp_path / "missing")
    assert raised.value.filename == str(tmp_path / "missing")
    assert raised.value.strerror == os.strerror(raised.value.errno)


def test_exchange_is_refused_off_linux(tmp_path, monkeypatch):
    first, second = make_bundle(tmp_path / "a", "first"), make_bundle(tmp_path / "b", "second")
    monkeypatch.setattr(outputs.sys, "platform", "darwin")
    assert outputs._exchange(first, second) is False
    assert bundle_content(first) == "first"


def test_fsync_folder_accepts_what_cannot_be_synced(tmp_path):
    fsync_folder(tmp_path)
    fsync_folder(tmp_path / "missing")  # no error


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_replace_folder_puts_the_new_folder_in_place_and_removes_the_old(tmp_path, monkeypatch, swap):
    if swap == "two renames":
        monkeypatch.setattr(outputs, "_exchange", lambda first, second: False)
    path = tmp_path / "model"
    replace_folder(make_bundle(make_staging(path), "first"), path)  # nothing there yet
    assert bundle_content(path) == "first"
    replace_folder(make_bundle(make_staging(path), "second"), path)
    assert bundle_content(path) == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _whole(path):
    """'old' or 'new': the whole folder at `path` (fails when it is neither)."""
    return bundle_content(path)


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_a_replacement_failing_at_any_step_leaves_the_old_or_the_new_folder(tmp_path, monkeypatch, swap):
    path = make_bundle(tmp_path / "model", "old")
    seen = []
    for at in range(1, 50):
        staging = make_bundle(make_staging(path), "new")
        with monkeypatch.context() as patch:
            if swap == "two renames":
                patch.setattr(outputs, "_exchange", lambda first, second: False)
            injector = Injector(patch, at, fail_step)
            try:
                replace_folder(staging, path)
                failed = False
            except OSError as error:
                assert "injected" in str(error)
                failed = True
        seen.append(_whole(path))
        if not failed:
            break
        for leftover in tmp_path.iterdir():  # this process's leftovers: removed by the caller
            if leftover.name != "model":
                shutil.rmtree(leftover)
        if seen[-1] == "new":
            make_bundle(path, "old")
    assert seen[-1] == "new" and "old" in seen and at == injector.count + 1, seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_a_replacement_killed_at_any_step_leaves_the_old_or_the_new_folder(tmp_path, swap):
    path = make_bundle(tmp_path / "model", "old")
    seen = []
    for at in range(1, 50):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                with pytest.MonkeyPatch.context() as patch:
                    if swap == "two renames":
                        patch.setattr(outputs, "_exchange", lambda first, second: False)
                    staging = make_bundle(make_staging(path), "new")
                    Injector(patch, at, die_at_step)
                    replace_folder(staging, path)
                status = 0
            finally:
                os._exit(status)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        assert code in (0, KILLED), code
        clean_leftovers(path)  # what the next run does first
        seen.append(_whole(path))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], seen
        if code == 0:
            break
        make_bundle(path, "old")
    assert seen[-1] == "new" and "old" in seen, seen
    assert seen == sorted(seen, key=["old", "new"].index), seen  # never back to the old one
    with pytest.MonkeyPatch.context() as patch:  # and the same replacement, not killed, in this process
        if swap == "two renames":
            patch.setattr(outputs, "_exchange", lambda first, second: False)
        replace_folder(make_bundle(make_staging(path), "again"), path)
    assert bundle_content(path) == "again" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# Where outputs may go.


def test_bundle_destinations(tmp_path):
    check_bundle_destination(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_bundle_destination(tmp_path / "empty")
    bundle = make_bundle(tmp_path / "model", "x")
    with pytest.raises(
        ScqueryError,
        match=r"already holds a model bundle; give overwrite=True to replace it, or choose a new folder\.$",
    ):
        check_bundle_destination(bundle)
    check_bundle_destination(bundle, overwrite=True)
    with pytest.raises(ScqueryError, match=r"is inside the model bundle .*model; write the new bundle"):
        check_bundle_destination(bundle / "inner")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ScqueryError, match=r"exists and is not a folder"):
        check_bundle_destination(tmp_path / "file", overwrite=True)
    (tmp_path / "link").symlink_to(bundle)
    with pytest.raises(ScqueryError, match=r"exists and is not a folder"):
        check_bundle_destination(tmp_path / "link", overwrite=True)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    with pytest.raises(
        ScqueryError,
        match=r"folder of other files, not .* own bundles; choose a new folder \(nothing was written\)\.$",
    ):
        check_bundle_destination(tmp_path / "project", overwrite=True)


def test_file_destinations(tmp_path):
    check_file_destination(tmp_path / "out.h5ad")
    check_file_destination(tmp_path / "a" / "b" / "out.h5ad")  # folders to be made
    (tmp_path / "out.h5ad").write_text("old")
    check_file_destination(tmp_path / "out.h5ad")  # overwrite is the default for files
    with pytest.raises(ScqueryError, match=r"out.h5ad exists; give --overwrite"):
        check_file_destination(tmp_path / "out.h5ad", overwrite=False)
    with pytest.raises(
        ScqueryError, match=r"is a folder; give a file name for the output \(e\.g\. .*/out\.h5ad\)\.$"
    ):
        check_file_destination(tmp_path)
    bundle = make_bundle(tmp_path / "model", "x")
    with pytest.raises(
        ScqueryError, match=r"is inside the model bundle .*model, which holds only .*; write it elsewhere\.$"
    ):
        check_file_destination(bundle / "out.h5ad")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ScqueryError, match=r"file is a file, so .* cannot be written"):
        check_file_destination(tmp_path / "file" / "x" / "out.h5ad")


def test_unwritable_file_destinations(tmp_path, monkeypatch):
    (tmp_path / "out.h5ad").write_text("old")
    (tmp_path / "out.h5ad").chmod(0o444)
    if ROOT_USER:  # permissions do not bind the root user: ask the mode bits instead
        real = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda path, mode: (
                real(path, mode) and not (mode & os.W_OK and not os.stat(path).st_mode & 0o200)
            ),
        )
    with pytest.raises(ScqueryError, match=r"is read-only"):
        check_file_destination(tmp_path / "out.h5ad")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ScqueryError, match=r"The folder .*locked is not writable"):
            check_file_destination(locked / "out.h5ad")
    finally:
        locked.chmod(0o755)


def test_outputs_that_are_inputs_or_each_other(tmp_path):
    data = tmp_path / "data.h5ad"
    data.write_text("input")
    check_outputs({"--out": tmp_path / "out.h5ad", "--matches": None}, [data])
    with pytest.raises(
        ScqueryError,
        match=r"^--out .*data.h5ad is the input .*never overwrites; choose another output path\.$",
    ):
        check_outputs({"--out": data}, [data], overwrite=True)
    with pytest.raises(ScqueryError, match=r"^--out .* holds the input .*data.h5ad, which scquery never"):
        check_outputs({"--out": tmp_path}, [data], folders={"--out"}, overwrite=True)
    with pytest.raises(ScqueryError, match=r"^--summary and --out are both .*x.tsv; give each output"):
        check_outputs({"--out": tmp_path / "x.tsv", "--summary": tmp_path / "x.tsv"})
    (tmp_path / "link.h5ad").symlink_to(data)
    with pytest.raises(ScqueryError, match=r"is the input"):
        check_outputs({"--out": tmp_path / "link.h5ad"}, [data], overwrite=True)
    model = make_bundle(tmp_path / "model", "x")
    with pytest.raises(ScqueryError, match=r"already holds a model bundle"):
        check_outputs({"--out": model}, [data], folders={"--out"})  # checked as a bundle folder
    check_outputs({"--out": model}, [data], folders={"--out"}, overwrite=True)
    with pytest.raises(ScqueryError, match=r"data.h5ad exists; give --overwrite"):
        check_outputs({"--out": data}, [], overwrite=False)
    check_outputs({"--out": data}, [], overwrite=True)
    with pytest.raises(ScqueryError, match=r"model is inside the model bundle .*model, which holds only"):
        check_outputs({"--matches": model}, [data], overwrite=True)  # checked as a file
    (tmp_path / "plain").mkdir()
    with pytest.raises(ScqueryError, match=r"plain is a folder; give a file name"):
        check_outputs({"--matches": tmp_path / "plain"}, [data], overwrite=True)


def test_same_and_within(tmp_path):
    data = tmp_path / "data.h5ad"
    data.write_text("x")
    assert outputs._same(data, tmp_path / "." / "data.h5ad")
    assert outputs._same(tmp_path / "missing", tmp_path / "sub" / ".." / "missing")
    assert not outputs._same(data, tmp_path / "missing")
    assert outputs._within(data, tmp_path) and outputs._within(tmp_path, tmp_path)
    assert not outputs._within(tmp_path, data) and not outputs._within(tmp_path / "ab", tmp_path / "a")


def test_staging_names_match_the_leftover_pattern():
    name = staging_prefix("/x/model", "staging") + "abc"
    assert re.fullmatch(outputs._LEFTOVER, name)


def test_outputs_are_named_as_what_is_written_in_folders_that_exist(tmp_path):
    tables = {"--matches": outputs.TABLES, "--out": (".h5ad",)}
    check_outputs({"--out": tmp_path / "a.h5ad", "--matches": tmp_path / "m.tsv.gz"}, suffixes=tables)
    with pytest.raises(
        ScqueryError, match=r"^--out .*x\.csv: scquery writes --out as \.h5ad only; give a name"
    ):
        check_outputs({"--out": tmp_path / "x.csv"}, suffixes=tables)
    with pytest.raises(ScqueryError, match=r"as \.tsv, \.tsv\.gz, \.csv or \.csv\.gz only"):
        check_outputs({"--matches": tmp_path / "m.h5"}, suffixes=tables)
    with pytest.raises(ScqueryError, match="a model bundle is a folder; give a folder name without .h5ad"):
        check_outputs({"--out": tmp_path / "model.h5ad"}, folders={"--out"})
    check_outputs({"--out": tmp_path / "model.v2"}, folders={"--out"})  # a dot is no file suffix
    missing = tmp_path / "new" / "deeper"
    with pytest.raises(ScqueryError, match=rf"^The folder {missing} does not exist, so --out .*mkdir -p"):
        check_outputs({"--out": missing / "a.h5ad"}, suffixes=tables)
    with pytest.raises(ScqueryError, match="does not exist"):
        check_outputs({"--out": missing / "model"}, folders={"--out"})
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_tables_are_written_as_their_names_say(tmp_path):
    import gzip

    import pandas as pd

    table = pd.DataFrame({"cell": ["a", "b"], "type": ["T", "B"]})
    for name, opener, sep in [
        ("t.tsv", open, "\t"),
        ("t.csv", open, ","),
        ("t.tsv.gz", gzip.open, "\t"),
        ("t.csv.gz", gzip.open, ","),
    ]:
        outputs.write_table(table, tmp_path / name)
        with opener(tmp_path / name, "rt") as handle:
            assert handle.read() == f"cell{sep}type\na{sep}T\nb{sep}B\n", name
