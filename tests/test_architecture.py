"""docs/ARCHITECTURE.md is true to the code: every module (those of the `preprocessing` package by their
dotted names) has a row, each row names the scquery modules that module imports, no module imports one
listed below it, and each arrow of the diagram of the data's way is an import."""

import ast
import itertools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "scquery"
ARCHITECTURE = (REPO / "docs" / "ARCHITECTURE.md").read_text()


def package_modules():
    """The package's modules by dotted name below `scquery` (`preprocessing.fit`), packages left out."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] != "__init__":
            names.append(".".join(parts))
    return names


def imported_modules(module, modules):
    """The package's modules that `module` imports (relatively or as scquery.x)."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(PACKAGE.joinpath(*module.split(".")).with_suffix(".py").read_text())):
        if isinstance(node, ast.ImportFrom):
            named = (node.module or "").split(".") if node.module else []
            if node.level:
                base = [*package[: len(package) - node.level + 1], *named]
            elif named[:1] == ["scquery"]:
                base = named[1:]
            else:
                continue
            for alias in node.names:
                found.update({".".join(base), ".".join([*base, alias.name])})
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("scquery.") for alias in node.names)
    return found & set(modules)


def documented_table():
    """module -> set of imported modules, in the table's order, from docs/ARCHITECTURE.md."""
    table = {}
    for line in ARCHITECTURE.splitlines():
        if line.startswith("| `"):
            name = line.split("`")[1]
            cell = line.rstrip(" |").rsplit(" | ", 1)[1]
            table[name] = set() if cell.strip() == "–" else {part.strip() for part in cell.split(",")}
    return table


def diagram_arrows():
    """`(a, b)` for each arrow of the diagram (the first code block): `a → b`, where either side may
    name several modules (`a, c → b`)."""
    block = re.search(r"```\n(.*?)```", ARCHITECTURE, flags=re.DOTALL).group(1)
    arrows = []
    for line in block.splitlines():
        sides = [[name.strip() for name in side.split(",")] for side in line.split("→")]
        arrows += [(a, b) for lower, higher in itertools.pairwise(sides) for a in lower for b in higher]
    return arrows


def row(module, modules):
    return f"`{module}` imports: {', '.join(sorted(imported_modules(module, modules))) or '–'}"


def test_every_module_has_a_row_and_no_row_is_stale():
    table, modules = documented_table(), package_modules()
    assert set(table) == set(modules), (
        f"add rows for {set(modules) - set(table)}, drop {set(table) - set(modules)}"
    )


def test_each_row_names_what_its_module_imports():
    table, modules = documented_table(), package_modules()
    wrong = [row(name, modules) for name in modules if table.get(name) != imported_modules(name, modules)]
    assert not wrong, "docs/ARCHITECTURE.md's imports column should say:\n" + "\n".join(wrong)


def test_modules_import_only_modules_listed_above_them():
    table, modules = documented_table(), package_modules()
    order = list(table)
    for name in modules:
        above = set(order[: order.index(name)]) if name in order else set()
        assert imported_modules(name, modules) <= above, f"{name} imports a module listed below it"


def test_each_arrow_of_the_diagram_is_an_import():
    modules = package_modules()
    arrows = diagram_arrows()
    assert len(arrows) > 20 and {"preprocessing.fit", "outputs", "provenance"} <= {b for a, b in arrows} | {
        a for a, b in arrows
    }
    unknown = sorted({name for arrow in arrows for name in arrow} - set(modules))
    assert not unknown, f"the diagram names no modules {unknown}"
    wrong = [f"{a} → {b}" for a, b in arrows if a not in imported_modules(b, modules)]
    assert not wrong, f"in the diagram, these modules do not import those before their arrows: {wrong}"


def test_the_import_reader_sees_each_kind_of_import():
    # The reader above is what the checks rest on: it must see relative and absolute imports alike, and
    # those of the package's modules, one level down.
    modules = package_modules()
    assert imported_modules("train", modules) >= {"bundle", "preprocessing.fit", "preprocessing.align"}
    assert "errors" in imported_modules("io", modules)
    assert imported_modules("errors", modules) == set()
    assert imported_modules("preprocessing.align", modules) == {"errors", "orthologs", "preprocessing.scales"}
