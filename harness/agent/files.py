"""The files a board's working folder gets, in one list: the agent, its wire format and configuration, and the splitting modules it imports.

`deploy` uploads them over SSH and `local_rack` copies them into each local agent's folder; both take them
from here, so that a module the agent starts to import is added once. The agent imports them as top-level
modules by the board file names below (Python 3.8, stdlib and numpy only).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict

# board file name -> the project module it is a copy of
SHIPPED = {"agent.py": "harness.agent.agent", "wire.py": "harness.agent.wire", "agent_config.py": "harness.agent.agent_config",
           "fast_model.py": "harness.agent.fast_model",  # the "fast" backend of virtual boards ...
           "fast_kernel.py": "harness.agent.fast_kernel",  # ... and its compiled kernel's loader
           "overlay.py": "harness.agent.overlay",  # the "overlay" backend of a real PYNQ-Z2
           "contract.py": "splitting.contract", "emulation.py": "splitting.emulation"}


def agent_files() -> Dict[str, Path]:
    """Board file name -> local source file, for every module shipped to a board (none is imported here)."""
    return {name: Path(importlib.util.find_spec(module).origin) for name, module in SHIPPED.items()}
