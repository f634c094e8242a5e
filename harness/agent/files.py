"""The code a board's working folder gets, in one place: the agent's package `harness.agent` whole, and the
modules of `splitting` it imports, each at its package path, so that the agent imports them on a board exactly
as on the host (one import world: no copies under other names, no fallback imports). The agent is started in
that folder as `python3 -m harness.agent part/agent.json` (MODULE). Both packages' `__init__.py` ship too and
stay import-light (a docstring only): importing `splitting.contract` on a board runs nothing else of `splitting`.

`deploy` uploads these files over SSH and `local_rack` copies them into each local agent's folder; both take
them from here (nothing is imported to list them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

MODULE = "harness.agent"  # `python3 -m harness.agent CONFIG.json` (harness/agent/__main__.py)
SPLITTING_MODULES = ("__init__", "contract", "emulation", "op_kinds")  # what the agent's package imports of it


def agent_files() -> Dict[str, Path]:
    """Path in the board's working folder (relative, with /) -> local source file, for every shipped module."""
    here = Path(__file__).resolve().parent  # harness/agent
    harness, splitting = here.parent, here.parent.parent / "splitting"
    files = {"harness/__init__.py": harness / "__init__.py"}
    files.update({"harness/agent/" + f.name: f for f in sorted(here.glob("*.py"))})
    files.update({"splitting/%s.py" % m: splitting / ("%s.py" % m) for m in SPLITTING_MODULES})
    return files
