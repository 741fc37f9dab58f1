"""Fixtures shared by the tests: the built-in data split and one small model trained on it."""

from pathlib import Path

import pytest

from scquery.datasets import pbmc68k_split
from scquery.train import train

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


def shared_file(name):
    """The path of `name` in `SHARED_DATA`; the calling test is skipped, saying so, without it."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data {path} is absent (../shared/data is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def small_config():
    """Training options of `SMALL_CONFIG` (tests copy them before changing any)."""
    return dict(SMALL_CONFIG)


@pytest.fixture(scope="session")
def split():
    """`pbmc68k_reduced` split into a reference (70 %) and a query (30 %), seed 0."""
    return pbmc68k_split(seed=0)


@pytest.fixture(scope="session")
def bundle(split):
    """A small model trained on the reference of `split` (tests must not change it)."""
    return train(split[0], label_key="bulk_labels", config=SMALL_CONFIG, seed=0)
