"""What stamps a run before it goes into the history: its kind, time, machine, the user's commit and
splitrack's own version.

The commit along a series is the user's: `--commit`, else the git commit of the plan's folder (where the
user keeps the plan and, usually, the model and its training code), else "unknown". splitrack's own version
(package version and, from a git checkout, its commit) is recorded beside it: a new splitrack is an event
on the series, not the user's change.
"""
from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

BENCH_KIND = "splitrack-bench"
RUN_KIND = "splitrack-run"  # summary of `splitrack run`'s run.json


def now_iso() -> str:
    """The current UTC time, ISO 8601 with microseconds (e.g. 2026-01-02T03:04:05.123456+00:00)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def machine_name() -> str:
    """This host's network name (platform.node()), 'unknown' when empty."""
    return platform.node() or "unknown"


def current_commit(cwd: Optional[Path] = None) -> str:
    """Short hash of HEAD of the git repository holding `cwd`, "+dirty" when tracked files changed; "unknown"
    outside git (or without git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def user_commit(plan_root: Optional[Path], given: Optional[str] = None) -> str:
    """The user's commit of a run: `given` (the --commit option) when set, else the commit of the git
    repository holding the plan folder, else "unknown"."""
    if given:
        return str(given).strip()
    if plan_root is None or not Path(plan_root).is_dir():
        return "unknown"
    return current_commit(Path(plan_root))


def splitrack_version() -> str:
    """splitrack's package version, and its commit when it runs from a git checkout ("0.1.0 (abc123def456)")."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("splitrack")
    except PackageNotFoundError:
        v = "unknown"
    commit = current_commit(Path(__file__).resolve().parents[2])
    return v if commit == "unknown" else f"{v} ({commit})"
