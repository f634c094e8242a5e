"""What a board carries to run its agent: board file name -> source in this repository.

One list for everything that ships the agent (deploy over SSH, local racks, benchmarks): the agent, its wire
format and configuration, and the two splitting modules it imports. All of it Python 3.8+, stdlib + numpy.
"""
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
AGENT_FILES = {
    "agent.py": _REPO / "harness" / "agent.py",
    "wire.py": _REPO / "harness" / "wire.py",
    "agent_config.py": _REPO / "harness" / "agent_config.py",
    "contract.py": _REPO / "splitting" / "contract.py",
    "emulation.py": _REPO / "splitting" / "emulation.py",
}
