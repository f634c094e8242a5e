"""One import world: every module shipped to a board (harness/agent/files.py) imports the same way on the host,
as a package module of the checkout, and in a copy of the board's working folder, in a fresh interpreter that
sees nothing else of the project (the host's Python and a board's Python 3.8). The static side (no fallback
imports, only shipped modules imported) is sim_tests/test_layout.py's."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.agent.files import MODULE, agent_files

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(agent_files())

# Imports every shipped module by its package name and reports where each project module came from. The
# venv's editable install of splitrack (a meta path finder that maps `harness` and `splitting` to a checkout)
# is taken out first: in the board's folder, only what was shipped may be found.
IMPORT_ALL = r"""
import importlib, json, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
sys.path.insert(0, sys.argv[1])
names = json.loads(sys.argv[2])
for name in names:
    importlib.import_module(name)
print(json.dumps({m: getattr(sys.modules[m], "__file__", None) for m in sorted(sys.modules)
                  if m.split(".")[0] in ("harness", "splitting")}))
"""


def _module(rel: str) -> str:
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = [_module(r) for r in SHIPPED]


def _import_all(python: str, root: Path) -> dict:
    # -I: no PYTHONPATH, no user site, no script folder on sys.path: only `root` and the interpreter's own
    r = subprocess.run([python, "-I", "-c", IMPORT_ALL, str(root), json.dumps(MODULES)], capture_output=True,
                       text=True, timeout=120, cwd=str(root))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _board_folder(tmp_path: Path) -> Path:
    board = tmp_path / "board"
    for rel, src in agent_files().items():
        (board / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, board / rel)
    return board


def test_the_shipped_list_is_the_agents_package_and_what_it_imports_of_splitting():
    assert "harness/agent/agent.py" in SHIPPED and "harness/agent/__main__.py" in SHIPPED
    assert {"splitting/contract.py", "splitting/emulation.py", "harness/__init__.py", "splitting/__init__.py"} \
        <= set(SHIPPED)
    assert MODULE == "harness.agent" and all(agent_files()[r].is_file() for r in SHIPPED)


def test_every_shipped_module_imports_on_the_host_as_a_package_module():
    loaded = _import_all(sys.executable, REPO)
    assert set(MODULES) <= set(loaded)
    for m in MODULES:
        assert Path(loaded[m]).resolve() == agent_files()[SHIPPED[MODULES.index(m)]].resolve(), m


@pytest.mark.parametrize("python", ["host", "3.8"])
def test_every_shipped_module_imports_from_the_board_layout_and_nothing_else(tmp_path, python, request):
    """The board's working folder holds only the shipped files: each module imports there under the same name
    as on the host (no fallback to another name could be taken: nothing else is there), and every project
    module loaded comes from that folder."""
    py = request.getfixturevalue("python38") if python == "3.8" else sys.executable
    board = _board_folder(tmp_path)
    loaded = _import_all(py, board)
    assert set(loaded) == set(MODULES), sorted(set(loaded) ^ set(MODULES))
    outside = {m: f for m, f in loaded.items() if not Path(f).resolve().is_relative_to(board.resolve())}
    assert not outside, outside


def test_a_module_missing_from_the_board_folder_fails_to_import_there(tmp_path):
    """The check can fail: with wire.py left out, importing the agent in the board's folder fails, instead of
    finding the module somewhere else (the checkout, the venv's editable install)."""
    board = _board_folder(tmp_path)
    (board / "harness" / "agent" / "wire.py").unlink()
    r = subprocess.run([sys.executable, "-I", "-c", IMPORT_ALL, str(board), json.dumps(["harness.agent.agent"])],
                       capture_output=True, text=True, timeout=120, cwd=str(board))
    assert r.returncode != 0 and re.search(r"(No module named|cannot import name) '(harness.agent.)?wire'", r.stderr), \
        r.stderr[-2000:]
