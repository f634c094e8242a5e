"""The layout's rules, read from the source (ast; nothing is imported, so no TensorFlow):

- folders in one order (FLOORS, as ARCHITECTURE.md draws them): a module imports only modules of its own folder
  or of folders on lower floors (an import inside a function counts: it is a dependency too);
- no import circle among the project's modules;
- `splitting` never imports `harness` (the splitting library stands alone; the CLI and the rack use it);
- one import world for what is shipped to a board (harness/agent/files.py): Python 3.8 syntax, only the standard
  library, numpy, pynq and other shipped modules imported, by their package names, with no fallback import;
- library modules know no argparse: only harness/cli/ does.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "splitting")

# The floors, lowest first: a module may import modules of its own folder and of folders on lower floors only.
# Folders on one floor do not import each other. The data flows upward: the model side, the agent's package
# (shipped to boards), the partition's RTL and bit-exact models, the rack, measuring, results, the jobs that
# drive the whole flow, and the two front ends.
FLOORS = [
    ("splitting", "harness"),  # `harness` is harness/__init__.py (shipped, imports nothing)
    ("harness.agent",),
    ("harness.cosim",),
    ("harness.rack",),
    ("harness.measure",),
    ("harness.results",),
    ("harness.jobs",),
    ("harness.cli", "harness.pytest_plugin"),
]


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


def folder_of(module: str) -> str:
    """The folder a module lives in, as FLOORS names it: `splitting`, `harness`, `harness.<folder>` or a module of
    harness/ itself (`harness.pytest_plugin`)."""
    parts = module.split(".")
    return parts[0] if parts[0] == "splitting" or len(parts) == 1 else ".".join(parts[:2])


def floor_violations(graph: Dict[str, Set[str]], floors=FLOORS) -> List[str]:
    """Every import that goes up a floor or sideways to another folder of the same floor, and every module of a
    folder no floor names, as one line each."""
    floor = {folder: i for i, names in enumerate(floors) for folder in names}
    bad = []
    for m, targets in sorted(graph.items()):
        fm = folder_of(m)
        if fm not in floor:
            bad.append(f"{m}: folder {fm} is on no floor (add it to FLOORS and ARCHITECTURE.md)")
            continue
        for t in sorted(targets):
            ft = folder_of(t)
            if ft != fm and (ft not in floor or floor[ft] >= floor[fm]):
                bad.append(f"{m} (floor {floor[fm]}) imports {t} (floor {floor.get(ft)})")
    return bad


def test_folders_import_only_folders_below_them():
    graph = import_graph()
    assert {folder_of(m) for m in graph} >= {"harness.agent", "harness.rack", "harness.jobs", "harness.cli"}
    bad = floor_violations(graph)
    assert not bad, "\n".join(bad)


def test_the_floor_check_finds_an_upward_and_a_sideways_import():
    graph = {"harness.rack.deploy": {"harness.measure.stream", "harness.agent.wire"},
             "harness.cli.run": {"harness.pytest_plugin"}, "harness.measure.stream": {"harness.rack.wiring"},
             "harness.newroom.x": set()}
    bad = floor_violations(graph)
    assert len(bad) == 3 and "harness.rack.deploy (floor 3) imports harness.measure.stream (floor 4)" in bad
    assert any("harness.cli.run" in b for b in bad) and any("harness.newroom" in b for b in bad)


def test_architecture_draws_the_floors_in_this_order():
    """ARCHITECTURE.md's floors line lists the folders bottom up, as FLOORS has them."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("Floors, lowest first:"))
    drawn = [tuple(f.strip().strip("`").replace("/", ".").rstrip(".") for f in floor.split(",") if f.strip())
             for floor in line.split(":", 1)[1].split("<")]
    assert drawn == FLOORS, (drawn, FLOORS)


def _shipped() -> Dict[str, Path]:
    from harness.agent.files import agent_files  # pathlib only: imports nothing of the agent

    return agent_files()


def _module_name(rel: str) -> str:
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_world_faults(rel: str, path: Path, shipped: Set[str]) -> List[str]:
    """What keeps a shipped file (`rel`, its path in the board's folder) out of the one import world, one line
    each: syntax newer than Python 3.8 (a board's), an import of something a board does not have (only the
    standard library, numpy, pynq and shipped modules), a project module that is not shipped, and a fallback
    import (`try: import x / except ImportError`, or a `# type: ignore` quieting a checker about a second name)."""
    import sys

    src = path.read_text()
    try:
        tree = ast.parse(src, feature_version=(3, 8))
    except SyntaxError as e:
        return [f"{rel}:{e.lineno}: not Python 3.8 syntax ({e.msg})"]
    faults = [f"{rel}:{i}: `# type: ignore`" for i, ln in enumerate(src.splitlines(), 1) if "type: ignore" in ln]
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            caught = [ast.unparse(h.type) for h in node.handlers if h.type is not None]
            if any("ImportError" in c or "ModuleNotFoundError" in c for c in caught):
                faults.append(f"{rel}:{node.lineno}: a fallback import (except {', '.join(caught)})")
    allowed = set(sys.stdlib_module_names) | {"numpy", "pynq"} | set(PACKAGES)
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else []
        faults += [f"{rel}:{node.lineno}: imports {n}: a board has only stdlib, numpy (and pynq)"
                   for n in names if n.split(".")[0] not in allowed]
    mods = project_modules()
    faults += [f"{rel} imports {t}, which is not shipped (harness/agent/files.py)"
               for t in sorted(imports_of(_module_name(rel), path, mods)) if t not in shipped]
    return faults


@pytest.mark.parametrize("rel", sorted(_shipped()))
def test_shipped_modules_live_in_one_import_world(rel):
    """What a board runs imports, on the board and on the host, the same modules by the same names."""
    shipped = {_module_name(r) for r in _shipped()}
    faults = import_world_faults(rel, _shipped()[rel], shipped)
    assert not faults, "\n".join(faults)


def test_the_import_world_check_finds_the_old_fallbacks(tmp_path):
    """The check can fail: the fallback imports the agent had (a board's flat name first, the package name
    second), a host module shipped by mistake and Python 3.10 syntax are each found."""
    f = tmp_path / "agent.py"
    f.write_text("try:\n    import wire  # type: ignore\nexcept ImportError:  # on the host\n"
                 "    from harness.agent import wire\nfrom harness.rack import deploy\nimport tensorflow\n")
    faults = import_world_faults("harness/agent/agent.py", f, {"harness.agent.wire", "harness.agent.agent"})
    assert len(faults) == 5, faults  # the flat `import wire` is a module a board does not have, too
    assert any("fallback import" in x for x in faults) and any("type: ignore" in x for x in faults)
    assert any("harness.rack.deploy, which is not shipped" in x for x in faults)
    assert any("tensorflow" in x for x in faults)
    f.write_text("match x:\n    case 1:\n        pass\n")
    assert "not Python 3.8 syntax" in import_world_faults("harness/agent/agent.py", f, set())[0]


def test_splitting_never_imports_harness():
    graph = import_graph()
    bad = {m: sorted(t for t in ts if t.split(".")[0] == "harness") for m, ts in graph.items()
           if m.split(".")[0] == "splitting"}
    assert not {m: t for m, t in bad.items() if t}


CLI_FOLDER = REPO / "harness" / "cli"  # a path, not a dotted name: relayout.py must not rewrite it


@pytest.mark.parametrize("module", sorted(m for m, f in project_modules().items() if f.parent != CLI_FOLDER))
def test_library_modules_know_no_argparse(module):
    mods = project_modules()
    tree = ast.parse(mods[module].read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # the virtual board is a program of its own (`python -m harness.rack.virtual_board`): its command line is
    # not the splitrack CLI
    if module == "harness.rack.virtual_board":
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
