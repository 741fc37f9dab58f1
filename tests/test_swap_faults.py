"""The atomic-swap promise by fault injection, deterministically: a bundle save that fails (an error)
or dies (the process ends) at each of its file-system steps in turn leaves the old bundle whole and
loadable, or the new one whole, never neither; and the next load puts things back in order.

The steps are the calls to the file-system functions a replacement is made of (`os.rename`,
`os.replace`, `os.unlink`, `shutil.rmtree`, the one-step swap `_exchange`, `fsync_folder`); the real
code runs, only the Nth such call fails or ends the process. The dying save runs in a forked child
(no new interpreter to start), which replaces the folder with a copy of a saved bundle.
"""

import os
import shutil
from pathlib import Path

import pytest
from faults import KILLED, Injector, die_at_step, fail_step

import scquery.outputs
from scquery.bundle import load_bundle, save_bundle
from scquery.outputs import make_staging, replace_folder
from scquery.train import train


@pytest.fixture(scope="module")
def new_bundle(split, small_config):
    """A second model (another seed, one epoch): another model_id to replace the first with."""
    return train(
        split[0], label_key="bulk_labels", config={**small_config, "pretrain": False, "epochs": 1}, seed=3
    )


def _outcome(path, old, new):
    """'old' or 'new': which whole bundle `path` holds (loaded and verified); fails when neither."""
    loaded = load_bundle(path)  # verifies every file against the manifest
    assert loaded.model_id in (old, new), loaded.model_id
    return "old" if loaded.model_id == old else "new"


def _check_sequence(outcomes):
    """Faults at successive steps: the old bundle until the swap, the new one after it."""
    seen = [outcome for _, outcome in outcomes]
    assert seen[-1] == "new", outcomes
    assert seen == sorted(seen, key=["old", "new"].index), outcomes  # never back to old
    assert "old" in seen, outcomes


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_a_save_failing_at_any_step_leaves_a_whole_bundle(bundle, new_bundle, tmp_path, monkeypatch, swap):
    path = save_bundle(bundle, tmp_path / "model")
    outcomes = []
    for at in range(1, 100):
        with monkeypatch.context() as patch:
            if swap == "two renames":
                patch.setattr(scquery.outputs, "_exchange", lambda first, second: False)
            injector = Injector(patch, at, fail_step)
            try:
                save_bundle(new_bundle, path, overwrite=True)
            except Exception:  # the injected failure, as it reaches the caller
                assert injector.fired is not None
        outcomes.append((injector.fired, _outcome(path, bundle.model_id, new_bundle.model_id)))
        if injector.fired is None:  # the save ran all its steps: the new bundle is in place
            break
        # put the old bundle back for the next step
        save_bundle(bundle, path, overwrite=True)
        assert _outcome(path, bundle.model_id, new_bundle.model_id) == "old"
    assert len(outcomes) > 2 and outcomes[-1] == (None, "new"), outcomes


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_a_replacement_killed_at_any_step_leaves_a_whole_bundle(bundle, new_bundle, tmp_path, swap):
    saved = save_bundle(new_bundle, tmp_path / "saved" / "model")
    path = save_bundle(bundle, tmp_path / "home" / "model")
    outcomes = []
    for at in range(1, 100):
        pid = os.fork()
        if pid == 0:  # the child: copy the new bundle beside `path`, then replace, dying at step `at`
            status = 1
            try:
                with pytest.MonkeyPatch.context() as patch:
                    if swap == "two renames":
                        patch.setattr(scquery.outputs, "_exchange", lambda first, second: False)
                    staging = make_staging(path)
                    shutil.copytree(saved, staging, dirs_exist_ok=True)
                    Injector(patch, at, die_at_step)
                    replace_folder(staging, path)
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, KILLED), code
        # the next load cleans the dead run's leftovers (and puts back a folder left on its way out)
        outcomes.append((at, _outcome(path, bundle.model_id, new_bundle.model_id)))
        assert sorted(p.name for p in path.parent.iterdir()) == ["model"], outcomes
        if code == 0:
            break
        save_bundle(bundle, path, overwrite=True)
    _check_sequence(outcomes)


def test_the_injector_reaches_every_step_of_a_replacement(tmp_path, monkeypatch):
    """The steps counted are those a replacement makes (a check of the test's own machinery)."""
    path = tmp_path / "folder"
    path.mkdir()
    staging = make_staging(path)
    (staging / "file").write_text("new")
    injector = Injector(monkeypatch, 0, fail_step)
    replace_folder(staging, path)
    assert (Path(path) / "file").read_text() == "new" and injector.count >= 3
