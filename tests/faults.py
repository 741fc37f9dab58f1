"""Fault injection for the file-system steps of a replacement (tests/test_outputs.py,
tests/test_swap_faults.py): the real code runs, only the Nth step fails or ends the process."""

import os
import shutil

import scquery.outputs

#: The file-system functions of a replacement, by module and name.
STEPS = [
    (os, "rename"),
    (os, "replace"),
    (os, "unlink"),
    (shutil, "rmtree"),
    (scquery.outputs, "_exchange"),
    (scquery.outputs, "fsync_folder"),
]
KILLED = 17  # the exit status of a child that died at its step


class Injector:
    """Counts the calls to `STEPS`; the `at`-th one runs `fail` instead of the real function (`fired`:
    the name of the step it failed, None while none did)."""

    def __init__(self, patch, at, fail):
        self.at, self.fail, self.count, self.fired = at, fail, 0, None
        for module, name in STEPS:
            patch.setattr(module, name, self._wrap(getattr(module, name), name))

    def _wrap(self, real, name):
        def step(*args, **kwargs):
            self.count += 1
            if self.count == self.at:
                self.fired = name
                self.fail(name)
            return real(*args, **kwargs)

        return step


def fail_step(name):
    raise OSError(5, f"injected failure in {name}")


def die_at_step(name):
    os._exit(KILLED)
