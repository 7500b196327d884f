"""The packages are layers: a module imports only from its own layer and the layers below it, and
no module imports one that imports it back, directly or round a circle.

Every import counts: at the top of a module, inside a function (a lazy import that goes back up
is still a circle, only a later one) and under ``if TYPE_CHECKING:``. The modules are read with
:mod:`ast`, never imported, so the test costs nothing and needs no TensorFlow.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

# Bottom to top. Data flows one way, receiver -> store -> flights -> track images -> model ->
# scores, and the processes that run it sit on top; but a layer is what a module *imports*, so
# the order below is the one today's code follows (each line says why a layer sits where it is).
# A module may import from its own layer and any layer below, never from one above.
LAYERS: list[tuple[str, tuple[str, ...], str]] = [
    ("foundation", ("pipeline", "pipeline.config", "pipeline.geo", "pipeline.parent"),
     "settings, geometry, the training child's guard (model/train.py): they import nothing of "
     "ours"),
    ("db", ("pipeline.db", "pipeline.migrations"),
     "the store: schema, engine, COPY writer, partitions, sites, the jobs queue; it knows no "
     "receiver, flight or model"),
    ("receiver", ("pipeline.receiver",),
     "bytes -> frames -> positions, written through db (decode.py builds db/rows.py's rows)"),
    ("flights", ("pipeline.flights",),
     "positions read back from db -> flights -> track images (raster.py), features, show.py"),
    ("alerts", ("pipeline.alerts",),
     "under the model although flags come first: scoring stores a flag's alert in the outbox in "
     "the flag's own transaction (model/score.py imports alerts/outbox.py)"),
    ("model", ("pipeline.model",),
     "trains on track images and scores flights: the flags"),
    ("evaluation", ("pipeline.evaluation",),
     "judges the model beside baselines on simulated (evaluation/simulate.py draws Beast frames "
     "with receiver/beast.py) or labelled traffic; the model never imports it"),
    ("web", ("pipeline.web",),
     "the pages people read, served and written (report.py): they read flights, scores and "
     "models from db, and are started by the service"),
    ("service", ("pipeline.service",),
     "the processes: run / ingest --live / worker / web, the worker's schedule (which starts "
     "ingest, flight passes, training, scoring and alert delivery), metrics, status, the demo"),
    ("cli", ("pipeline.cli",),
     "the adsb-pipeline command: parses arguments and calls one handler of any layer"),
]


@dataclass(frozen=True)
class Import:
    module: str       # the importing module
    path: str         # its file, relative to the repository
    line: int
    target: str       # the module imported, resolved to one of ours where it is one
    text: str         # the statement as written

    def where(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def layer_of(module: str) -> int:
    """Index in LAYERS of the layer ``module`` belongs to (longest prefix wins; the package
    ``pipeline`` itself names only its ``__init__``)."""
    best, best_len = None, -1
    for i, (_, prefixes, _) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "pipeline" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise LookupError(f"{module} belongs to no layer: add it (or its package) to LAYERS in "
                          f"tests/test_layers.py, where the modules it imports allow")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(module: str, source: str, path: str, *, is_package: bool = False,
               known: set[str] | frozenset[str] = frozenset()) -> list[Import]:
    """Every import of a module of ours in ``source``, at any depth, resolved to a module of
    ``known`` where one matches (``from pipeline.db import engine`` is ``pipeline.db.engine``;
    ``from pipeline.db.engine import make_engine`` is ``pipeline.db.engine`` too)."""
    package = module if is_package else module.rpartition(".")[0]

    def resolve(name: str) -> str:
        probe = name
        while probe and probe not in known:
            probe = probe.rpartition(".")[0]
        return probe or name

    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                     for alias in node.names]
        else:
            continue
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        for name in dict.fromkeys(names):
            if name == "pipeline" or name.startswith("pipeline."):
                target = resolve(name)
                if target != module:
                    found.append(Import(module, path, node.lineno, target, " ".join(text.split())))
    return found


def upward(imports: list[Import]) -> list[str]:
    """The imports that reach a layer above their module's, as messages."""
    out = []
    for imp in imports:
        own, theirs = layer_of(imp.module), layer_of(imp.target)
        if theirs > own:
            out.append(f"{imp.where()}  ({imp.module}, layer {LAYERS[own][0]}, imports "
                       f"{imp.target}, layer {LAYERS[theirs][0]}, which is above it)")
    return out


def find_cycle(graph: dict[str, list[Import]]) -> list[Import] | None:
    """One circle of imports (the edges, in order), or None."""
    state: dict[str, int] = {}          # 1 on the current path, 2 done
    path: list[Import] = []

    def visit(node: str) -> list[Import] | None:
        state[node] = 1
        for imp in graph.get(node, []):
            if state.get(imp.target) == 1:
                start = next(i for i, e in enumerate(path) if e.module == imp.target)
                return path[start:] + [imp]
            if imp.target not in state:
                path.append(imp)
                cycle = visit(imp.target)
                if cycle:
                    return cycle
                path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def read_tree() -> dict[str, list[Import]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(f) for f in files} | {"pipeline.migrations"}
    return {module_name(f): imports_of(module_name(f), f.read_text(), str(f.relative_to(ROOT)),
                                       is_package=f.name == "__init__.py", known=known)
            for f in files}


# ---- today's code ----------------------------------------------------------------------------
def test_every_module_belongs_to_a_layer():
    missing = []
    for module in read_tree():
        try:
            layer_of(module)
        except LookupError as e:
            missing.append(str(e))
    assert not missing, "\n".join(missing)


def test_no_module_imports_a_layer_above_its_own():
    wrong = [msg for imports in read_tree().values() for msg in upward(imports)]
    assert not wrong, "imports that go up a layer:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    cycle = find_cycle(read_tree())
    assert cycle is None, "modules import each other round a circle:\n" + \
        "\n".join(imp.where() for imp in cycle)


def test_every_command_names_an_existing_handler():
    """cli.py imports its handlers by dotted name (so that ``ingest`` never loads TensorFlow),
    which the checks above cannot follow: each must name a function that exists."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    handlers = [node.value for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value.startswith("pipeline.") and ":" in node.value]
    assert len(handlers) >= 15
    for handler in handlers:
        module, _, name = handler.partition(":")
        file = ROOT.joinpath(*module.split(".")).with_suffix(".py")
        assert file.exists(), f"cli.py names {handler}: no {file.relative_to(ROOT)}"
        defined = {n.name for n in ast.parse(file.read_text()).body
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert name in defined, f"cli.py names {handler}: {module} defines no {name}()"


# ---- the checker itself ------------------------------------------------------------------------
SYNTHETIC = '''\
"""A flights module that reaches up three ways."""
from typing import TYPE_CHECKING

from pipeline.db import engine                       # down: fine
from ..geo import to_local_km                        # down, relative: fine
from pipeline.model import score                     # up, at the top

if TYPE_CHECKING:
    from pipeline.web.context import WebContext      # up, for the types only


def close(settings):
    import pipeline.service.serve                    # up, lazily
    from . import raster                             # same layer: fine
    return pipeline.service.serve, raster
'''
KNOWN = {"pipeline", "pipeline.geo", "pipeline.db", "pipeline.db.engine", "pipeline.flights",
         "pipeline.flights.raster", "pipeline.flights.fake", "pipeline.model",
         "pipeline.model.score", "pipeline.web", "pipeline.web.context", "pipeline.service",
         "pipeline.service.serve"}


def test_the_checker_reports_each_upward_import_with_file_line_and_statement():
    imports = imports_of("pipeline.flights.fake", SYNTHETIC, "pipeline/flights/fake.py", known=KNOWN)
    assert {imp.target for imp in imports} == {
        "pipeline.db.engine", "pipeline.geo", "pipeline.model.score", "pipeline.web.context",
        "pipeline.service.serve", "pipeline.flights.raster"}
    wrong = upward(imports)
    assert len(wrong) == 3, wrong
    assert wrong[0].startswith("pipeline/flights/fake.py:6: from pipeline.model import score  (")
    assert "layer flights, imports pipeline.model.score, layer model" in wrong[0]
    assert wrong[1].startswith(
        "pipeline/flights/fake.py:9: from pipeline.web.context import WebContext  (")
    assert wrong[2].startswith("pipeline/flights/fake.py:13: import pipeline.service.serve  (")


def test_the_checker_finds_a_circle_closed_by_a_lazy_import():
    top = "from pipeline.web import context\n"
    lazy = "def page():\n    from pipeline.web import app\n    return app\n"
    known = {"pipeline.web", "pipeline.web.app", "pipeline.web.context", "pipeline.web.routes"}
    graph = {
        "pipeline.web.app": imports_of("pipeline.web.app", "from pipeline.web import routes\n",
                                       "pipeline/web/app.py", known=known),
        "pipeline.web.routes": imports_of("pipeline.web.routes", top + lazy,
                                          "pipeline/web/routes.py", known=known),
        "pipeline.web.context": [],
    }
    cycle = find_cycle(graph)
    assert cycle is not None
    assert [imp.where() for imp in cycle] == [
        "pipeline/web/app.py:1: from pipeline.web import routes",
        "pipeline/web/routes.py:3: from pipeline.web import app"]
    graph["pipeline.web.routes"] = imports_of("pipeline.web.routes", top,
                                              "pipeline/web/routes.py", known=known)
    assert find_cycle(graph) is None


def test_a_module_of_no_layer_is_named():
    with pytest.raises(LookupError, match="pipeline.newthing belongs to no layer"):
        layer_of("pipeline.newthing")
    assert LAYERS[layer_of("pipeline")][0] == "foundation"
    assert LAYERS[layer_of("pipeline.service.scheduler")][0] == "service"
