"""The agent's pidfile: one agent per config, a stale file (a crashed agent's) replaced. Shipped with the agent
(Python 3.8, standard library only)."""
from __future__ import annotations

import os

from harness.agent.agent_config import AgentConfigError


def write_pidfile(path):
    """Write this process's pid to `path`. Raises AgentConfigError when another live agent holds it; a pidfile
    left by a crashed agent is stale and replaced."""
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = int(f.read().strip() or 0)
        except (OSError, ValueError):
            old = 0
        if old and old != os.getpid() and _alive(old):
            raise AgentConfigError("another agent (pid %d) runs with pidfile %s: stop it first" % (old, path))
    with open(path, "w") as f:
        f.write("%d\n" % os.getpid())


def remove_pidfile(path):
    """Remove `path`; nothing when it is gone already."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _alive(pid):
    """Whether `pid` runs and is an agent (its command line names one; unknown counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"agent" in f.read()
    except OSError:
        return True
