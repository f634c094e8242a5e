"""The layout's rules, read from the source (ast; nothing is imported, so no TensorFlow):

- no import circle among the project's modules (an import inside a function counts: it is a dependency too);
- `splitting` never imports `harness` (the splitting library stands alone; the CLI and the rack use it);
- library modules know no argparse: only harness/cli/ (and the cosim command's harness/cli/cosim.py) does.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "splitting")


def project_modules(root: Path = REPO) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages."""
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _resolve(name: str, mods: Dict[str, Path]) -> str:
    """The project module an imported name belongs to (the longest dotted prefix that is a module), or ''."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in mods:
            return ".".join(parts[:i])
    return ""


def imports_of(module: str, path: Path, mods: Dict[str, Path]) -> Set[str]:
    """Project modules that `module` imports anywhere in its file (top level or inside functions). A package's
    __init__ is not counted as a dependency of its submodules: importing harness.rack.ssh runs harness/rack's
    __init__, but that is Python's doing, not a dependency the code chose."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                pkg = ".".join(base + ([node.module] if node.module else []))
            else:
                pkg = node.module or ""
            names = [f"{pkg}.{a.name}" for a in node.names]  # a submodule, or an attribute of pkg
        for n in names:
            target = _resolve(n, mods)
            if target and target != module:
                out.add(target)
    return out


def import_graph(root: Path = REPO) -> Dict[str, Set[str]]:
    mods = project_modules(root)
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import circle as [a, b, ..., a], or [] when the graph has none (depth-first search)."""
    state: Dict[str, int] = {}  # 1 on the current path, 2 done
    stack: List[str] = []

    def visit(m: str) -> List[str]:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the project (a wrong root would pass any check)
    cycle = find_cycle(graph)
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle(tmp_path):
    """The check can fail: a two-module circle through a function-level import is found (module names that
    no layout move rewrites, so relayout.py leaves this test alone)."""
    pkg = tmp_path / "harness"
    pkg.mkdir()
    (tmp_path / "splitting").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "alpha.py").write_text("def check():\n    from . import beta\n")
    (pkg / "beta.py").write_text("from harness.alpha import check\n")
    cycle = find_cycle(import_graph(tmp_path))
    assert cycle[0] == cycle[-1] and set(cycle) == {"harness.alpha", "harness.beta"}


def test_splitting_never_imports_harness():
    graph = import_graph()
    bad = {m: sorted(t for t in ts if t.split(".")[0] == "harness") for m, ts in graph.items()
           if m.split(".")[0] == "splitting"}
    assert not {m: t for m, t in bad.items() if t}


CLI_FOLDER = REPO / "harness" / "cli"  # a path, not a dotted name: relayout.py must not rewrite it


@pytest.mark.parametrize("module", sorted(m for m, f in project_modules().items() if f.parent != CLI_FOLDER
                                          and m != "harness.cli.cosim"))
def test_library_modules_know_no_argparse(module):
    mods = project_modules()
    tree = ast.parse(mods[module].read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # the agent and the virtual board are programs of their own (`python3 agent.py CONFIG`): their
    # command lines are not the splitrack CLI
    if module in ("harness.agent.agent", "harness.rack.virtual_board"):
        pytest.skip("a stand-alone program's own command line")
    assert "argparse" not in names


def test_every_command_module_exists_with_configure_and_run():
    """The dispatcher names its commands' modules as strings: each must be a module of the project that
    defines configure(parser) and run(args)."""
    mods = project_modules()
    tree = ast.parse((CLI_FOLDER / "commands.py").read_text())
    table = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "COMMANDS")
    commands = {e.elts[0].value: e.elts[1].value for e in table.elts}
    assert {"split", "verify", "plan", "run", "history", "demo"} <= set(commands)
    for name, module in commands.items():
        assert module in mods, f"splitrack {name}: no module {module}"
        defs = {n.name for n in ast.parse(mods[module].read_text()).body if isinstance(n, ast.FunctionDef)}
        assert {"configure", "run"} <= defs, f"splitrack {name}: {module} lacks configure/run"
