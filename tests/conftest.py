"""Fixtures shared by the tests (the built-in data split, one small model trained on it), `shared_file` for
the real datasets, and the summary line saying how many real-data tests ran or were skipped, and why."""

import os
from pathlib import Path

import pytest

#: A network and schedule small enough for tests, on pbmc68k_reduced's 765 genes.
SMALL_CONFIG = {
    "min_genes": 0,
    "hidden_sizes": [64, 16],
    "pretrain_epochs": 4,
    "epochs": 30,
    "batch_size": 64,
    "min_cells_per_class": 5,
}


#: The real labelled datasets beside the repository (../shared/data; absent from a user's clone).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Set (CI sets it where SHARED_DATA exists) to fail the run when a real-data test skipped or none ran.
REQUIRE_REAL_DATA = "SCQUERY_REQUIRE_REAL_DATA"


def shared_file(name):
    """The path of `name` in `SHARED_DATA`; the calling test is skipped, saying so, without it.

    A test that calls it, directly or through a fixture, counts as a real-data test in the summary
    line at the end of the run.
    """
    _real_data.mark_caller()
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data {path} is absent (../shared/data is not beside this checkout)")
    return path


class _RealDataTests:
    """Which tests read real data (through `shared_file`) and how each ended."""

    def __init__(self):
        self.fixtures = set()  # (baseid, name) of fixtures that called shared_file
        self.fixture_stack = []  # fixtures being set up, innermost last
        self.tests = set()  # node ids of tests that called shared_file themselves
        self.current = None  # node id of the test being run
        self.outcomes = {}  # node id -> (outcome, skip reason or None)

    def mark_caller(self):
        if self.fixture_stack:
            self.fixtures.update(self.fixture_stack)
        elif self.current is not None:
            self.tests.add(self.current)

    def reads_real_data(self, item):
        return item.nodeid in self.tests or any(
            name in item.fixturenames and item.nodeid.startswith(baseid) for baseid, name in self.fixtures
        )

    def summary(self):
        """One line: how many real-data tests ran, how many skipped and why."""
        line = f"real-data tests ({SHARED_DATA}):"
        if not self.outcomes:
            return f"{line} none in this run"
        ran = [outcome for outcome, _ in self.outcomes.values() if outcome != "skipped"]
        reasons = sorted({reason for outcome, reason in self.outcomes.values() if outcome == "skipped"})
        line += f" {len(ran)} ran ({ran.count('passed')} passed)"
        skipped = len(self.outcomes) - len(ran)
        return line + (f", {skipped} skipped: {'; '.join(reasons)}" if skipped else ", none skipped")

    def problem(self):
        """Why a run that requires real data fails, or None."""
        if not os.environ.get(REQUIRE_REAL_DATA):
            return None
        if not self.outcomes:
            return f"{REQUIRE_REAL_DATA} is set but no real-data test ran"
        if any(outcome == "skipped" for outcome, _ in self.outcomes.values()):
            return f"{REQUIRE_REAL_DATA} is set but real-data tests were skipped"
        return None


_real_data = _RealDataTests()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    _real_data.fixture_stack.append((fixturedef.baseid, fixturedef.argname))
    try:
        return (yield)
    finally:
        _real_data.fixture_stack.pop()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _real_data.current = item.nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    ended = report.when == "call" or (report.when == "setup" and not report.passed) or report.failed
    if ended and _real_data.reads_real_data(item):
        reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else None
        _real_data.outcomes[item.nodeid] = (report.outcome, reason)
    return report


def pytest_sessionfinish(session):
    if _real_data.problem():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(_real_data.summary())
    problem = _real_data.problem()
    if problem:
        terminalreporter.write_line(f"FAILED: {problem}", red=True, bold=True)


@pytest.fixture(scope="session")
def small_config():
    """Training options of `SMALL_CONFIG` (tests copy them before changing any)."""
    return dict(SMALL_CONFIG)


@pytest.fixture(scope="session")
def split():
    """`pbmc68k_reduced` split into a reference (70 %) and a query (30 %), seed 0."""
    from scquery.datasets import pbmc68k_split  # here, so that pytest starts without Keras

    return pbmc68k_split(seed=0)


@pytest.fixture(scope="session")
def bundle(split):
    """A small model trained on the reference of `split` (tests must not change it)."""
    from scquery.train import train

    return train(split[0], label_key="bulk_labels", config=SMALL_CONFIG, seed=0)


def process_like(adata, record, **inputs):
    """`(X, alignment)`: `adata`'s values processed like the reference of the preprocessing `record`,
    as a query is (`scquery.embed.compute_embedding`; `inputs`: `InputOptions`' fields)."""
    from scquery.options import InputOptions
    from scquery.preprocessing.align import apply_record
    from scquery.values import select_values

    options = InputOptions(**inputs)
    cells = select_values(adata, layer=options.layer, use_raw=options.use_raw, gene_key=options.gene_key)
    return apply_record(cells, record, options)


def fit_values(adata, labels=None, **options):
    """`(X, kept, record)`: the reference fit (`fit_reference`) of `adata`'s `.X` with these training
    options (a backed `.X` stays on disk)."""
    from scquery.config import TrainConfig
    from scquery.preprocessing.fit import fit_reference
    from scquery.values import select_values

    cells = select_values(adata, layer=None, use_raw=False, on_disk=True)
    return fit_reference(cells, TrainConfig(**options), labels=labels)
