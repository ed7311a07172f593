"""Where things live. The layers, each importing only those below it (DESIGN.md, "Layout"):
``flows`` over ``blocks`` over ``tqflow`` (fleet, GKE, the analysis) over the engine, which
imports nothing from Prefect. ``flows/`` holds only flows and the CLI (which no flow imports),
and every error tqflow
raises on purpose is defined in ``tqflow/errors.py``."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "tqflow" / "engine"
#: What the engine may import from this project: itself and the errors module.
ENGINE_MAY_IMPORT = ("tqflow.engine", "tqflow.errors")
PROJECT_PACKAGES = ("tqflow", "flows", "blocks")


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, at module level or inside a function."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def all_modules(package: str) -> list[str]:
    root = importlib.import_module(package)
    return [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]


@pytest.mark.parametrize("path", sorted(ENGINE.glob("*.py")), ids=lambda p: p.name)
def test_engine_module_imports_neither_prefect_nor_the_layers_above(path):
    wrong = [
        name
        for name in imported_modules(path)
        if under(name, ("prefect",))
        or under(name, PROJECT_PACKAGES)
        and not under(name, ENGINE_MAY_IMPORT)
    ]
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}: the engine stays below Prefect"


TQFLOW = ROOT / "tqflow"
BLOCKS = ROOT / "blocks"


@pytest.mark.parametrize(
    "path", sorted(TQFLOW.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_nothing_under_tqflow_imports_the_blocks_or_the_flows(path):
    wrong = [name for name in imported_modules(path) if under(name, ("blocks", "flows"))]
    assert not wrong, (
        f"{path.relative_to(ROOT)} imports {wrong}: tqflow/ works against the engine's "
        "contracts (tqflow/engine/contracts.py), below the blocks that implement them"
    )


@pytest.mark.parametrize(
    "path", sorted(BLOCKS.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_the_blocks_never_import_the_flows(path):
    wrong = [name for name in imported_modules(path) if under(name, ("flows",))]
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}: blocks sit below the flows"


FLOWS = ROOT / "flows"


@pytest.mark.parametrize(
    "path",
    sorted(p for p in FLOWS.glob("*.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_flows_never_import_the_command_line(path):
    wrong = [name for name in imported_modules(path) if under(name, ("flows.cli",))]
    assert not wrong, (
        f"{path.relative_to(ROOT)} imports {wrong}: the command line sits above the flows it "
        "runs (a flow's hint for the command line comes from its blocks, e.g. "
        "TaskQueue.command_flags)"
    )


def project_modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    found = {}
    for package in PROJECT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def project_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from package import module`` is the module's
    import, not the package's), at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = [f"{node.module}.{a.name}" for a in node.names]
            found.update(m for m in submodules if m in modules)
            if not all(m in modules for m in submodules):
                found.add(node.module)
    return found & set(modules)


def test_no_import_runs_in_a_circle():
    modules = project_modules()
    graph = {name: project_imports(path, modules) - {name} for name, path in modules.items()}
    circles = []
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            circles.append(trail[trail.index(name) :] + [name])
            return
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert not circles, "imports that run in a circle: " + "; ".join(
        " -> ".join(c) for c in circles
    )


def test_importing_the_whole_engine_loads_no_prefect():
    modules = all_modules("tqflow.engine")
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_flows_package_holds_only_flows_and_the_cli():
    from prefect import Flow

    for name in all_modules("flows"):
        if name == "flows" or name == "flows.cli" or name.startswith("flows.cli."):
            continue
        module = importlib.import_module(name)
        own_flows = [
            value
            for value in vars(module).values()
            if isinstance(value, Flow) and value.fn.__module__ == name
        ]
        assert own_flows, f"{name} defines no @flow: it belongs in tqflow/, not flows/"


#: The modules at ``tqflow/``'s top: what every room shares. The rest lives in a room named
#: for its concern (engine, enqueue, results, fleet, gke).
TQFLOW_TOP_MODULES = {"__init__", "errors", "examples", "artifacts"}


def test_tqflow_keeps_its_modules_in_rooms_named_for_their_concern():
    loose = {p.stem for p in TQFLOW.glob("*.py")} - TQFLOW_TOP_MODULES
    assert not loose, (
        f"tqflow/{sorted(loose)[0]}.py lies loose: put it in the package of its concern "
        "(tqflow/enqueue, tqflow/results, tqflow/fleet, ...)"
    )


def test_every_tqflow_error_is_defined_in_the_errors_module():
    from tqflow.errors import TqflowError

    for package in PROJECT_PACKAGES:
        for name in all_modules(package):
            importlib.import_module(name)
    elsewhere, todo = [], [TqflowError]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__ != "tqflow.errors" and not cls.__module__.startswith("tests"):
            elsewhere.append(f"{cls.__module__}.{cls.__qualname__}")
    assert not elsewhere, f"define these in tqflow/errors.py: {elsewhere}"


#: A batch folder's subfolders and files: named in `tqflow.engine.layout` only.
BATCH_FOLDER_PARTS = (
    "/outputs/",
    "/errors/",
    "/workers/",
    "/workers-digest.json",
    "/analysis/",
    "/enqueued/",
    "/batch.json",
    "/shards/",
    "/fleet/",
    "/pipelines/",
)
LAYOUT = ENGINE / "layout.py"


def _spelled_out_batch_paths(path: Path) -> list[str]:
    """f-strings of ``path`` that build a batch-folder path themselves (``f"{batch}/outputs/"``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                part.value if isinstance(part, ast.Constant) else "{}" for part in node.values
            )
            if any(part in text for part in BATCH_FOLDER_PARTS) and text.startswith("{}"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text}")
    return found


def test_only_the_layout_module_spells_out_a_batch_folders_paths():
    sources = [p for package in PROJECT_PACKAGES for p in (ROOT / package).rglob("*.py")]
    found = [hit for p in sources if p != LAYOUT for hit in _spelled_out_batch_paths(p)]
    assert not found, found
    assert _spelled_out_batch_paths(LAYOUT)  # the check sees what it looks for
