"""docs/ARCHITECTURE.md's module table is true to the code: every module has a row, each row names the
scquery modules that module imports, and no module imports one listed below it."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "scquery"


def package_modules():
    return sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def imported_modules(module, modules):
    """The package's modules that `module` imports (relatively or as scquery.x)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            absolute = (node.module or "").split(".")
            if node.level == 1 and node.module:
                found.add(absolute[0])
            elif node.level == 1 or absolute == ["scquery"]:
                found.update(alias.name for alias in node.names)
            elif absolute[0] == "scquery":
                found.add(absolute[1])
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1] for alias in node.names if alias.name.startswith("scquery.")
            )
    return found & set(modules)


def documented_table():
    """module -> set of imported modules, in the table's order, from docs/ARCHITECTURE.md."""
    table = {}
    for line in (REPO / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        if line.startswith("| `"):
            name = line.split("`")[1]
            cell = line.rstrip(" |").rsplit(" | ", 1)[1]
            table[name] = set() if cell.strip() == "–" else {part.strip() for part in cell.split(",")}
    return table


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


def test_the_import_reader_sees_each_kind_of_import():
    # The reader above is what the checks rest on: it must see relative and absolute imports alike.
    modules = package_modules()
    assert imported_modules("train", modules) >= {"bundle", "preprocess"}
    assert "errors" in imported_modules("io", modules)
    assert imported_modules("errors", modules) == set()
