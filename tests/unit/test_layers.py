"""The product's layers, checked from the source: every module of app/, core/, connectors/ and sinks/
is parsed with `ast` (nothing is imported) and each import, at module level or inside a function,
relative or through importlib with a literal name, is held against the rules of
docs/architecture.md#layers:

  * core imports only core, and none of the lake's libraries (deltalake, duckdb, pyarrow);
  * a connector imports core and itself: no other connector, no sink, not the application;
  * a sink imports core and itself: no connector, no other sink, not the application;
  * the application (app/) may import everything.

core/registry.py names the plugins as dotted strings and imports them by variable when a worker is
built; strings are not imports, so it passes.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# {"lakeward.app": "app", "lakeward.core": "core", ...}: the installed name of each folder
PACKAGE_DIRS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
LAKE_LIBRARIES = {"deltalake", "duckdb", "pyarrow"}
FOLDERS = set(PACKAGE_DIRS.values())


@dataclass(frozen=True)
class Import:
    importer: str  # dotted name of the importing module
    where: str  # file:line
    target: str  # dotted name of what it imports (a module, or a module's attribute)


@dataclass(frozen=True)
class Layer:
    name: str  # app, core, connectors, sinks; "" for anything else
    plugin: str | None = None  # the connector's or sink's package (postgres, delta ...)


def layer_of(dotted: str) -> Layer:
    parts = dotted.split(".")
    if parts[0] != "lakeward" or len(parts) < 2:
        return Layer("")
    if parts[1] in ("connectors", "sinks"):
        return Layer(parts[1], parts[2] if len(parts) > 2 else None)
    return Layer(parts[1])


def imports_of(source: str, module: str, *, is_package: bool, where: str) -> list[Import]:
    """Every import in `source` (the module `module`), with relative names made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            # `from lakeward import sinks` imports lakeward.sinks: name and attribute both count
            targets = [origin if alias.name == "*" else f"{origin}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _is_dynamic_import(node.func)):
            targets = [node.args[0].value]
        found += [Import(module, f"{where}:{node.lineno}", t) for t in targets]
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    """importlib.import_module(...), import_module(...) or __import__(...)."""
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def violation(imp: Import) -> str | None:
    """Why `imp` breaks the layering, or None."""
    top = imp.target.split(".")[0]
    if top in FOLDERS:
        return f"imports the folder {top}/ by its bare name; it ships as lakeward.{top}"
    src, dst = layer_of(imp.importer), layer_of(imp.target)
    if src.name == "core":
        if top in LAKE_LIBRARIES:
            return f"core imports {top}, a library of the lake (it belongs in sinks/)"
        if dst.name not in ("", "core"):
            return f"core imports the higher layer {dst.name}"
    if src.name in ("connectors", "sinks"):
        if dst.name == "app":
            return f"{src.name} import the application"
        if dst.name in ("connectors", "sinks") and (dst.name != src.name or dst.plugin != src.plugin):
            other = f"{dst.name}.{dst.plugin}" if dst.plugin else dst.name
            return f"{src.name}.{src.plugin} imports {other}: plugins import only core and themselves"
    return None


@cache
def product_imports() -> tuple[Import, ...]:
    found = []
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder)
            is_package = rel.name == "__init__.py"
            parts = rel.parent.parts if is_package else (*rel.parent.parts, rel.stem)
            module = ".".join((package, *parts))
            found += imports_of(path.read_text(), module, is_package=is_package, where=str(path.relative_to(REPO)))
    return tuple(found)


def _report(imports: tuple[Import, ...], layer: str) -> list[str]:
    """One line per offending import statement (`from x import a, b` is one)."""
    return list(dict.fromkeys(f"{imp.where}: {why}" for imp in imports
                              if layer_of(imp.importer).name == layer and (why := violation(imp))))


def test_core_imports_no_higher_layer_and_no_lake_library() -> None:
    assert not (found := _report(product_imports(), "core")), "\n".join(found)


def test_connectors_import_only_core_and_themselves() -> None:
    assert not (found := _report(product_imports(), "connectors")), "\n".join(found)


def test_sinks_import_only_core_and_themselves() -> None:
    assert not (found := _report(product_imports(), "sinks")), "\n".join(found)


def test_the_application_imports_no_folder_by_its_bare_name() -> None:
    assert not (found := _report(product_imports(), "app")), "\n".join(found)


def test_every_module_is_read() -> None:
    """The checks above see each layer's modules and their imports (an empty scan would pass them all)."""
    imports = product_imports()
    importers = {imp.importer for imp in imports}
    assert {"lakeward.app.cli", "lakeward.core.config", "lakeward.connectors.postgres.source",
            "lakeward.connectors.mysql.source", "lakeward.sinks.delta.sink"} <= importers
    edges = {(layer_of(imp.importer).name, layer_of(imp.target).name) for imp in imports}
    assert {("app", "sinks"), ("app", "connectors"), ("connectors", "core"), ("sinks", "core"), ("core", "core")} <= edges


def _check(source: str, module: str, *, is_package: bool = False) -> list[str]:
    return [why for imp in imports_of(source, module, is_package=is_package, where="t.py") if (why := violation(imp))]


def test_each_kind_of_import_is_caught() -> None:
    assert _check("def f():\n    import deltalake.exceptions\n", "lakeward.core.retry") == [
        "core imports deltalake, a library of the lake (it belongs in sinks/)"]
    assert _check("from pyarrow import compute as pc\n", "lakeward.core.types")
    assert _check("from lakeward.sinks.delta import store\n", "lakeward.core.config") == ["core imports the higher layer sinks"]
    assert _check("from ..sinks.delta import arrow\n", "lakeward.core.types") == ["core imports the higher layer sinks"]
    assert _check("importlib.import_module('lakeward.app.cli')\n", "lakeward.core.registry") == [
        "core imports the higher layer app"]
    assert _check("from lakeward.connectors import postgres\n", "lakeward.connectors.mysql.source") == [
        "connectors.mysql imports connectors.postgres: plugins import only core and themselves"]
    assert _check("from ...sinks.delta.arrow import to_arrow\n", "lakeward.connectors.mysql.decode")
    assert _check("from lakeward.app.runner import run_workers\n", "lakeward.sinks.delta.sink") == [
        "sinks import the application"]
    assert _check("from lakeward.connectors.postgres.types import decode\n", "lakeward.sinks.delta.batch")
    assert _check("import core.config\n", "lakeward.app.cli") == [
        "imports the folder core/ by its bare name; it ships as lakeward.core"]


def test_what_the_layers_allow_passes() -> None:
    assert not _check("from lakeward.core.events import Position\nimport pyarrow as pa\n", "lakeward.sinks.delta.batch")
    assert not _check("from . import decode\nfrom .types import X\nfrom lakeward.core import broker\n",
                      "lakeward.connectors.mysql.source")
    assert not _check("from .source import MySQLSource\n", "lakeward.connectors.mysql", is_package=True)
    assert not _check("from lakeward.sinks.delta import store\nfrom lakeward.connectors.mysql import catalog\n",
                      "lakeward.app.demo.data")
    # the registry's plugin names are strings, imported by variable
    assert not _check('SINKS = {"delta": "lakeward.sinks.delta.sink:DeltaSink"}\n'
                      "def load(ref):\n    return importlib.import_module(ref.split(':')[0])\n", "lakeward.core.registry")
