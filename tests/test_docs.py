"""The documentation checked against the code and the benchmark results: README's output keys against what
`query` writes, the functions docs/ARCHITECTURE.md names (and that it names every public one), the Unknown
reasons in `scquery query --help`, and README's result figures against benchmarks/RESULTS.md."""

import ast
import logging
import re
from pathlib import Path

import keras
import pytest

from scquery.cli import main
from scquery.query import query
from scquery.rules import REASONS, SIGNALS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
RESULTS = (ROOT / "benchmarks" / "RESULTS.md").read_text()


def _section(text, title):
    """The Markdown section `## title` of `text`, up to the next `## ` heading."""
    return text.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


# README's output keys are what a query writes.


def test_readme_key_table_lists_what_query_writes(bundle, split):
    table = [line for line in _section(README, "Python").splitlines() if line.startswith("| `")]
    documented = {kind: set() for kind in ("obs", "obsm", "uns")}
    for kind, key in re.findall(r"`(obsm|obs|uns)\['([^']+)'\]", "\n".join(table)):
        documented[kind].add(key)
    adata = split[1][:40].copy()
    adata.uns.pop("scquery", None)  # what reading the data recorded
    given = {"obs": set(adata.obs.columns), "obsm": set(adata.obsm), "uns": set(adata.uns)}
    query(adata, bundle, k=5)
    written = {
        "obs": set(adata.obs.columns) - given["obs"],
        "obsm": set(adata.obsm) - given["obsm"],
        "uns": set(adata.uns) - given["uns"],
    }
    assert written == documented


# docs/ARCHITECTURE.md names only what exists.

#: Names of other libraries the document uses, and where they are.
EXTERNAL = {
    "Input": keras,
    "Dense": keras.layers,
    "Normalization": keras.layers,
    "PyDataset": keras.utils,
    "SeedGenerator": keras.random,
    "fit": keras.Model,
    "NullHandler": logging,
    "keras": keras,
}
#: Backticked words that are no code names: the package's import names, a faiss setting, a key pattern.
WORDS = {"scquery", "scq", "nprobe", "X_name", "sha256sum"}
FILE = re.compile(r"\.(keras|json|h5ad|sha256|npz|yaml|py|md)$")


def _modules():
    """`(name, file)` per scquery module, by dotted name below `scquery` (`preprocessing.fit`)."""
    package = ROOT / "src" / "scquery"
    for file in sorted(package.rglob("*.py")):
        parts = file.relative_to(package).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__", file


def _defined_names():
    """Per scquery module: its top-level names and its classes' members; and every parameter name."""
    defined, parameters = {}, set()
    for module, file in _modules():
        tree = ast.parse(file.read_text())
        names = set()
        for node in tree.body:
            body = [node, *node.body] if isinstance(node, ast.ClassDef) else [node]
            for item in body:
                if isinstance(item, ast.FunctionDef | ast.ClassDef):
                    names.add(item.name)
                elif isinstance(item, ast.Assign):
                    names |= {n.id for t in item.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                parameters |= {a.arg for a in node.args.args + node.args.kwonlyargs}
        defined[module] = names
    return defined, parameters


def test_architecture_names_only_what_exists():
    defined, parameters = _defined_names()
    everything = set().union(*defined.values()) | set(defined) | parameters | {"pl"}
    unknown = []
    for span in re.findall(r"`([^`\n]+)`", ARCHITECTURE):
        match = re.match(r"^(?:scquery\.)?(?:([\w.]+)\.)?([A-Za-z_]\w*)(\(|$| /)", span)
        if not match or FILE.search(span) or span in WORDS:
            continue
        module, name = match.group(1), match.group(2)
        if f"{module}.{name}" in defined:  # a module of a package: `preprocessing.fit`
            found = True
        elif module in defined:
            found = name in defined[module]
        elif module is not None and module.split(".")[0] in EXTERNAL:  # keras.distribution.DataParallel
            owner = EXTERNAL[module.split(".")[0]]
            for part in module.split(".")[1:]:
                owner = getattr(owner, part, None)
            found = hasattr(owner, name)
        elif name in EXTERNAL:
            found = module is None or hasattr(EXTERNAL[name], name)
        else:
            found = name in everything
        if not found:
            unknown.append(span)
    assert not unknown, f"docs/ARCHITECTURE.md names what the code does not hold: {unknown}"


def test_architecture_table_names_each_modules_own_functions():
    defined, _ = _defined_names()
    for line in ARCHITECTURE.splitlines():
        row = re.match(r"^\| `([\w.]+)`[^|]* \| (.*) \| [^|]* \|$", line)
        if not row:
            continue
        module, holds = row.groups()
        for name in re.findall(r"`([A-Za-z_]\w*)\(", holds):
            assert name in defined[module], f"{module} has no {name} (docs/ARCHITECTURE.md)"


def test_architecture_table_names_every_public_function_and_class():
    """A module's row names each of its public functions and classes, so a new one cannot go unmentioned
    (and, with the tests above, a removed or renamed one cannot stay)."""
    rows = {}
    for line in ARCHITECTURE.splitlines():
        row = re.match(r"^\| `([\w.]+)`[^|]* \| (.*) \| [^|]* \|$", line)
        if row:
            rows[row.group(1)] = set(re.findall(r"`(?:\w+\.)?([A-Za-z_]\w*)", row.group(2)))
    missing, scorers = [], {f"rules.{signal.score.__name__}" for signal in SIGNALS}  # named by SIGNALS
    for module, file in _modules():
        for node in ast.parse(file.read_text()).body:
            public = isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")
            if public and node.name not in rows.get(module, set()) and file.stem != "__init__":
                missing.append(f"{module}.{node.name}")
    missing = sorted(set(missing) - scorers)
    assert not missing, f"docs/ARCHITECTURE.md's module table does not name {missing}"


# The command line names every Unknown reason.


def test_query_help_lists_every_unknown_reason(capsys):
    with pytest.raises(SystemExit):
        main(["query", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for reason in REASONS[1:]:
        assert f"'{reason}'" in text, reason


# README's result figures come from benchmarks/RESULTS.md.

NUMBER = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.(\d+))?)(?:\s?[–-]\s?\d[\d.]*)?(\s?%)?")


def _results_numbers():
    return [float(n.replace(",", "")) for n in re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", RESULTS)]


def test_readme_figures_are_in_results():
    """Each figure with a decimal point or a percent sign in README's results section is one of
    RESULTS.md's numbers, rounded as README shows it (a percent: a share × 100)."""
    results = _results_numbers()
    missing = []
    for match in NUMBER.finditer(_section(README, "How it compares")):
        text, decimals, percent = match.groups()
        if not decimals and not percent:
            continue  # whole numbers: counts of tasks, cells, folds, seeds
        value, places = float(text.replace(",", "")), len(decimals or "")
        scales = (1, 100) if percent else (1,)
        if not any(abs(round(r * s, places) - value) < 1e-9 for r in results for s in scales):
            missing.append(match.group(0))
    assert not missing, f"README figures not in benchmarks/RESULTS.md: {missing}"


def test_results_sections_record_their_commit():
    for part in re.split(r"\n## ", RESULTS)[1:]:
        title = part.splitlines()[0]
        # parts run before runs recorded their commit name the last commit before they ended
        found = re.search(r"; commit (not recorded \([^)]*: )?[0-9a-f]{7,40}", part)
        assert found, f"RESULTS.md section {title!r} records no commit"
