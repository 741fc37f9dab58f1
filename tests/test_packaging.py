"""Packaging and developer habits: the linters are clean, the package builds with the lowest setuptools
it allows and installs with JAX instead of TensorFlow, the conda environment lists what pyproject.toml
needs, `make` and CI run what the README says, and a test run reports its real-data tests."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from scquery.backend import choose_backend

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
BIN = Path(sys.executable).parent


def run(*command, cwd=REPO, env=None, timeout=600):
    return subprocess.run(
        list(map(str, command)), capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


# Linters (also `make lint`) -------------------------------------------------------------------------------


def test_ruff_checks_every_python_file_including_the_workflow_scripts():
    listed = run(BIN / "ruff", "check", "--show-files", ".").stdout
    assert "workflow/scripts/query.py" in listed and "benchmarks/__main__.py" in listed
    result = run(BIN / "ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_every_python_file_unchanged():
    result = run(BIN / "ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_is_undefined_only_for_the_workflow_scripts():
    ignores = PYPROJECT["tool"]["ruff"]["lint"]["per-file-ignores"]
    assert ignores == {"workflow/scripts/*.py": ["F821"]}
    stray = subprocess.run(
        [BIN / "ruff", "check", "--no-cache", "--stdin-filename", "src/scquery/x.py", "-"],
        input="print(snakemake.input)\n",
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert stray.returncode == 1 and "F821" in stray.stdout


# Packaging metadata ---------------------------------------------------------------------------------------


def lowest_setuptools():
    (requirement,) = (Requirement(r) for r in PYPROJECT["build-system"]["requires"])
    assert requirement.name == "setuptools"
    (bound,) = (spec.version for spec in requirement.specifier if spec.operator == ">=")
    return bound


def test_build_backend_accepts_pep_639_licence_metadata():
    assert Version(lowest_setuptools()) >= Version("77")  # setuptools < 77 rejects `license = "MIT"`
    assert PYPROJECT["project"]["license"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]


def test_tensorflow_is_the_default_backend_extra_not_a_requirement():
    names = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    assert "tensorflow" not in names and "jax" not in names and "keras" in names
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert [Requirement(r).name for r in extras["tensorflow"]] == ["tensorflow"]
    assert [Requirement(r).name for r in extras["jax"]] == ["jax"]
    makefile = (REPO / "Makefile").read_text()
    assert [Requirement(r).name for r in extras["tensorflow-cpu"]] == ["tensorflow-cpu"]
    assert re.search(r"^RUN_EXTRAS \?= \$\(TENSORFLOW\),workflow$", makefile, re.M)  # one backend
    assert re.search(r"^EXTRAS \?= \$\(RUN_EXTRAS\),test,", makefile, re.M)  # the same TensorFlow


def test_conda_environment_pins_every_dependency_of_pyproject():
    environment = yaml.safe_load((REPO / "envs" / "scquery.yaml").read_text())
    assert environment["channels"][0] == "conda-forge"
    pins = {}
    for entry in environment["dependencies"]:
        name, _, version = entry.partition("=")
        pins[canonicalize_name(name.strip())] = version.strip()
    assert all(re.fullmatch(r"\d+\.\d+", version) for version in pins.values()), pins
    project = PYPROJECT["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["tensorflow"]
    needed += project["optional-dependencies"]["loom"]
    for requirement in map(Requirement, needed):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"envs/scquery.yaml lacks {name} (pyproject.toml: {requirement})"
        assert requirement.specifier.contains(pins[name] + ".0"), f"{name}={pins[name]} is not {requirement}"
    assert Version(pins["setuptools"] + ".0") >= Version(lowest_setuptools())  # builds scquery offline
    deploy = (REPO / "envs" / "scquery.post-deploy.sh").read_text()
    assert "--no-deps" in deploy and "SCQUERY_SOURCE" in deploy  # the package only, from this checkout


def test_every_rule_runs_in_the_top_level_environment():
    # One copy of the environment, in envs/ at the top level; every rule's `conda:` names it.
    assert not (REPO / "workflow" / "envs").exists()
    for rules in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = rules.read_text()
        directives = re.findall(r"^\s+conda:\n\s+\"([^\"]+)\"", text, re.M)
        assert len(directives) == len(re.findall(r"^rule ", text, re.M)), rules.name  # one per rule
        for directive in directives:
            assert (rules.parent / directive).resolve() == REPO / "envs" / "scquery.yaml", rules.name


def test_catalog_metadata_and_layout():
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert catalog["usage"]["software-stack-deployment"]["conda"] is True
    assert catalog["usage"]["report"] is True
    for path in ("workflow/Snakefile", "config/config.yaml", "config/README.md", ".test/config/config.yaml"):
        assert (REPO / path).is_file(), path
    for profile in ("default", "slurm"):
        settings = yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text())
        assert "software-deployment-method" not in settings  # conda is opt-in: --sdm conda


# Make, CI and pytest habits -------------------------------------------------------------------------------


def make_dry_run(target):
    result = run("make", "--no-print-directory", "-n", target)  # also when run under make
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_is_the_fast_loop_and_test_all_lints_and_runs_everything():
    assert any(re.search(r"bin/pytest -m \"not slow\"$", line) for line in make_dry_run("test"))
    lines = make_dry_run("test-all")
    for tool in ("ruff check .", "ruff format --check .", "snakefmt --check Snakefile workflow"):
        assert any(line.endswith(tool) for line in lines), tool
    assert lines[-1].endswith("bin/pytest")  # every test, slow ones included
    lint = make_dry_run("lint")
    assert [line.rsplit("/", 1)[-1] for line in lint[-3:]] == [
        "ruff check .", "ruff format --check .", "snakefmt --check Snakefile workflow",
    ]  # fmt: skip


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    (command,) = re.findall(r"^(make [\w-]+)\s+# .*what CI runs", readme, re.M)
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert ci[-1] == command == "make test-all"
    assert "export SCQUERY_REQUIRE_REAL_DATA=1" in ci  # where ../shared/data exists


def test_markers_are_strict(pytestconfig):
    assert pytestconfig.getoption("strict_markers")
    assert "slow" in "".join(pytestconfig.getini("markers"))


REAL_DATA_TESTS = """
import pytest
from conftest import shared_file

@pytest.fixture(scope="module")
def table():
    return shared_file("a.h5ad")

def test_direct():
    assert shared_file("a.h5ad").name == "a.h5ad"

def test_through_a_fixture(table):
    assert table.name == "a.h5ad"

def test_through_the_same_fixture_again(table):
    assert table.is_file()

def test_without_real_data():
    assert True
"""


def pytest_in(project, require=False):
    env = {key: value for key, value in os.environ.items() if key != "SCQUERY_REQUIRE_REAL_DATA"}
    env.update({"SCQUERY_REQUIRE_REAL_DATA": "1"} if require else {})
    return run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", cwd=project, env=env, timeout=120)


def test_summary_line_counts_real_data_tests_and_ci_fails_when_they_skip(tmp_path):
    # A copy of this test set-up, where ../shared/data is tmp_path/shared/data.
    project = tmp_path / "repo"
    (project / "tests").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", project)
    shutil.copy(REPO / "tests" / "conftest.py", project / "tests")
    (project / "tests" / "test_real.py").write_text(REAL_DATA_TESTS)
    data = tmp_path / "shared" / "data"

    absent = pytest_in(project)
    assert absent.returncode == 0, absent.stdout
    assert f"real-data tests ({data}): 0 ran (0 passed), 3 skipped: " in absent.stdout
    assert f"real data {data / 'a.h5ad'} is absent" in absent.stdout
    required = pytest_in(project, require=True)
    assert required.returncode == 1
    assert "FAILED: SCQUERY_REQUIRE_REAL_DATA is set but real-data tests were skipped" in required.stdout

    data.mkdir(parents=True)
    (data / "a.h5ad").write_bytes(b"")
    present = pytest_in(project, require=True)
    assert present.returncode == 0, present.stdout
    assert f"real-data tests ({data}): 3 ran (3 passed), none skipped" in present.stdout

    (project / "tests" / "test_real.py").write_text(
        "import pytest\n\n@pytest.mark.slwo\ndef test_x():\n    pass\n"
    )
    misspelt = pytest_in(project)
    assert misspelt.returncode != 0 and "'slwo' not found in `markers`" in misspelt.stdout


# The Keras backend ----------------------------------------------------------------------------------------


#: Imports scquery as from its source tree on a host where it is not installed (no metadata: the GPU
#: host of docs/SCALING.md runs it with PYTHONPATH=src), and makes a bundle's version record.
_NOT_INSTALLED = textwrap.dedent(
    """
    import importlib.metadata as metadata
    installed = metadata.version
    def version(name):
        if name == "scquery":
            raise metadata.PackageNotFoundError(name)
        return installed(name)
    metadata.version = version
    import scquery
    from scquery.bundle import current_versions
    print(scquery.__version__, current_versions()["scquery"])
    """
)


def test_scquery_runs_from_its_source_tree_without_being_installed():
    done = subprocess.run([sys.executable, "-c", _NOT_INSTALLED], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0+source", "0+source"]


def test_backend_named_in_keras_backend_is_kept(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # even where torch is absent: the user's choice
    assert choose_backend() == "torch" and os.environ["KERAS_BACKEND"] == "torch"


def test_backend_from_keras_json_is_kept_when_installed(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "keras.json").write_text('{"backend": "numpy"}')
    assert choose_backend() == "numpy" and "KERAS_BACKEND" not in os.environ


def test_an_installed_backend_replaces_an_absent_one(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "keras.json").write_text('{"backend": "no_such_backend"}')
    installed = choose_backend()
    assert installed in ("tensorflow", "jax", "torch") and os.environ["KERAS_BACKEND"] == installed


# Installing from a clean environment (slow: downloads through pip's cache) ----------------------------------


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory):
    """A fresh venv with the lowest setuptools pyproject.toml allows, and a copy of the sources."""
    root = tmp_path_factory.mktemp("install")
    source = root / "scquery"
    (source / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source)
    shutil.copytree(
        REPO / "src" / "scquery", source / "src" / "scquery", ignore=shutil.ignore_patterns("__pycache__")
    )
    venv = root / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    python = venv / "bin" / "python"
    result = run(python, "-m", "pip", "install", "--quiet", f"setuptools=={lowest_setuptools()}", timeout=300)
    assert result.returncode == 0, result.stderr
    return python, source, root


def pip_install(python, target):
    # --no-build-isolation: build with the venv's (lowest allowed) setuptools, not the newest.
    command = [python, "-m", "pip", "install", "--quiet", "--no-build-isolation", target]
    result = run(*command, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_pip_install_with_the_lowest_setuptools(clean_venv):
    python, source, root = clean_venv
    pip_install(python, source)
    metadata = run(
        python, "-c", "from importlib.metadata import metadata; print(metadata('scquery').as_string())"
    )
    assert "License-Expression: MIT" in metadata.stdout and "License-File: LICENSE" in metadata.stdout
    assert "Provides-Extra: jax" in metadata.stdout
    # The built-in orthologue table and its source note are package data (found without importing).
    shipped = run(
        python,
        "-c",
        "import importlib.util, pathlib; spec = importlib.util.find_spec('scquery'); "
        "data = pathlib.Path(spec.origin).parent / 'data'; "
        "print(all((data / name).is_file() for name in ('human_mouse_orthologs.tsv.gz', 'README.md')))",
        cwd=root,
    )
    assert shipped.stdout.strip() == "True", shipped.stderr
    # No backend installed yet (the JAX test below adds one): the import says what to install.
    env = {**os.environ, "KERAS_HOME": str(root / "keras")}
    env.pop("KERAS_BACKEND", None)
    no_backend = run(python, "-c", "import scquery", cwd=root, env=env)
    assert no_backend.returncode == 1
    assert "pip install 'scquery[tensorflow]' (the default), 'scquery[jax]'" in no_backend.stderr


QUERY_ON_JAX = textwrap.dedent(
    """
    import sys
    from importlib.util import find_spec
    import scquery  # first: it chooses the backend before Keras is imported
    import keras
    from scquery.bundle import load_bundle, save_bundle
    from scquery.datasets import pbmc68k_split
    from scquery.query import query
    from scquery.train import train

    reference, held_out = pbmc68k_split(seed=0)
    config = {"min_genes": 0, "hidden_sizes": [64, 16], "pretrain_epochs": 2, "epochs": 20}
    save_bundle(train(reference, label_key="bulk_labels", config=config, seed=0), sys.argv[1])
    bundle = load_bundle(sys.argv[1])
    matches = query(held_out, bundle, k=5)
    truth = held_out.obs["bulk_labels"].astype(str)
    accuracy = (held_out.obs["scquery_knn"].astype(str) == truth).mean()  # the neighbours' vote
    majority = truth.value_counts(normalize=True).iloc[0]  # a constant answer's accuracy
    # the peer on the same data: 5 nearest neighbours in 8 principal components of the same values
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier
    ref_values, query_values = reference.X.toarray(), held_out.X.toarray()
    pca = PCA(8, random_state=0).fit(ref_values)
    knn = KNeighborsClassifier(5).fit(pca.transform(ref_values), reference.obs["bulk_labels"].astype(str))
    peer = knn.score(pca.transform(query_values), truth)
    print(keras.backend.backend(), bundle.versions["backend"], find_spec("tensorflow") is None)
    print(held_out.obsm["X_scquery"].shape, len(matches), sep="|", end="|")
    print(f"{accuracy:.3f}|{majority:.3f}|{peer:.3f}")
    """
)


@pytest.mark.slow
def test_jax_extra_installs_without_tensorflow_and_trains_and_queries(clean_venv):
    python, source, root = clean_venv
    pip_install(python, f"{source}[jax]")
    env = {**os.environ, "KERAS_HOME": str(root / "keras")}
    env.pop("KERAS_BACKEND", None)
    result = run(
        python, "-c", QUERY_ON_JAX, root / "model", cwd=root, env={**env, "KERAS_BACKEND": "jax"}, timeout=900
    )
    assert result.returncode == 0, result.stderr[-5000:]
    backend, answers = result.stdout.splitlines()[-2:]
    shape, n_matches, accuracy, majority, peer = answers.split("|")
    assert backend == "jax jax True"  # on JAX, with no TensorFlow installed
    assert (shape, n_matches) == ("(210, 16)", "1050")  # 30 % of pbmc68k_reduced, k = 5
    # measured on TensorFlow: 0.790 against the largest type's 0.343 and PCA + kNN's 0.781
    assert float(accuracy) > float(majority) + 0.25, answers
    assert float(accuracy) > float(peer) - 0.1, answers
    # With KERAS_BACKEND unset, importing scquery picks JAX: Keras's default, TensorFlow, is absent.
    chosen = run(python, "-c", "import scquery, keras; print(keras.backend.backend())", cwd=root, env=env)
    assert chosen.returncode == 0 and chosen.stdout.split() == ["jax"], chosen.stderr[-3000:]
