"""dvc.yaml declares what each stage really depends on: every pipeline/ and stages/ module a stage imports
(derived from the code, transitively) is among its deps, so an edit there makes `dvc status` say so; and the
library never imports the stages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages")


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
    missing = sorted(str(f) for f in closure(module) if not covered(f))
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
