"""Fixtures of the board tests."""
import os
import subprocess

import pytest


@pytest.fixture(scope="session")
def python38():
    """A Python 3.8 with numpy (what PYNQ images ship), set up once under <cache>/py38; skips the test when
    the machine has no Python 3.8."""
    import shutil
    from pathlib import Path

    from filelock import FileLock

    import glob

    candidates = [shutil.which("python3.8")] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    runs = [c for c in candidates if c and subprocess.run([c, "--version"], capture_output=True).returncode == 0]
    if not runs:
        pytest.skip("no python3.8 on this machine")
    base = runs[0]
    from splitting.user_cache import cache_root

    venv = cache_root() / "py38"
    py = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv) + ".lock"):
        if not (venv / ".ok").exists():
            subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy<1.25"], check=True, timeout=600)
            (venv / ".ok").touch()
    return str(py)
