"""dvc.yaml declares what each stage really depends on: every pipeline/ and stages/ module a stage imports
(derived from the code, transitively) is among its deps, so an edit there makes `dvc status` say so (the params
schema aside: ``NOT_A_RESULT``); the library never imports the stages; its folders import only down their layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages")
# Imported by every stage but never a dependency: the params schema validates params.yaml and returns it unchanged
# (tests/test_params.py), so no output depends on it; an edit to its help text must not re-run the pipeline.
NOT_A_RESULT = {Path("pipeline/params.py")}


def module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth of its code (lazy imports in functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from pipeline import templates`
    return {m for m in out if m.split(".")[0] in PACKAGES and module_file(m)}


def closure(module: str) -> set[Path]:
    """The files of ``module`` and of every project module it imports, transitively (package __init__s aside)."""
    seen, todo = set(), [module]
    while todo:
        path = module_file(todo.pop())
        if path in seen:
            continue
        seen.add(path)
        todo += sorted(imported_modules(path))
    return {p.relative_to(ROOT) for p in seen if p.name != "__init__.py"}


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_definition(stage: dict) -> dict:
    return stage["do"] if "foreach" in stage else stage


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_imported_module_is_a_dependency(name):
    stage = stage_definition(stages()[name])
    module = stage["cmd"].split("python -m ", 1)[1].split()[0]
    deps = [Path(d) for d in stage["deps"]]
    covered = lambda f: any(f == d or d in f.parents for d in deps)  # noqa: E731
    missing = sorted(str(f) for f in closure(module) - NOT_A_RESULT if not covered(f))
    assert not missing, f"{name}: add to its deps in dvc.yaml: {missing}"


def test_package_inits_hold_no_code():
    """__init__ files are left out of the deps above, so they must not hold anything that changes a result."""
    for init in ROOT.glob("*/**/__init__.py"):
        if init.parts[len(ROOT.parts)] not in PACKAGES:
            continue
        body = [n for n in ast.parse(init.read_text()).body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert all(isinstance(n, ast.Assign) and [t.id for t in n.targets] == ["__version__"] for n in body), init


def test_the_library_never_imports_the_stages():
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith("stages"))
                 for p in (ROOT / "pipeline").rglob("*.py")}
    assert not {p: m for p, m in offenders.items() if m}


def test_no_stage_function_over_40_lines_and_no_library_module_over_400():
    long_functions = [f"{p.name}:{n.name} ({n.end_lineno - n.lineno + 1} lines)"
                      for p in (ROOT / "stages").glob("*.py") for n in ast.walk(ast.parse(p.read_text()))
                      if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 40]
    assert not long_functions
    long_modules = [str(p) for p in (ROOT / "pipeline").rglob("*.py") if len(p.read_text().splitlines()) > 400]
    assert not long_modules


# ----------------------------------------------------------------------------- the library's layers
# A module imports only modules of its own layer or a lower one: the files a training stage depends on (and DVC
# re-runs it for) then never include evaluation, the workflow or the service.
LAYERS = (("errors", "io", "hardware", "timing", "params"), ("data",), ("tasks",), ("model",), ("retrieval",), ("training",),
          ("workflow",), ("evaluation",), ("service",))
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def layer_of(module: str) -> int:
    part = module.split(".")[1]
    assert part in LEVEL, f"{module}: pipeline/{part} is in no layer of LAYERS"
    return LEVEL[part]


def pipeline_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in (ROOT / "pipeline").rglob("*.py")
            if p.name != "__init__.py"}


@pytest.mark.parametrize("module", sorted(pipeline_modules()))
def test_imports_point_down_the_layers(module):
    upward = sorted(m for m in imported_modules(pipeline_modules()[module])
                    if m.startswith("pipeline.") and module_file(m).name != "__init__.py" and layer_of(m) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports from a higher layer: {upward}"


def runtime_imports(path: Path) -> set[str]:
    """``imported_modules`` less those under ``if TYPE_CHECKING:`` (annotations only: never a cycle at run time)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
                   for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only and isinstance(node, ast.ImportFrom):
            node.module = "typing"  # drop it from the walk below
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] == "pipeline" and module_file(m) and module_file(m).name != "__init__.py"}


def test_no_import_cycles():
    graph = {m: runtime_imports(p) for m, p in pipeline_modules().items()}
    graph = {m: {module_of(module_file(i)) for i in deps} & set(graph) for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("name", ["warmup", "mine_negatives", "finetune"])
def test_training_stages_do_not_depend_on_evaluation_workflow_or_service(name):
    """Editing the metrics, reply grounding, the DM head or the service never makes training stale."""
    deps = stage_definition(stages()[name])["deps"]
    above = [d for d in deps if d.startswith(("pipeline/evaluation", "pipeline/workflow", "pipeline/service"))]
    assert not above, f"{name} depends on {above}"
