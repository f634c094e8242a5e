"""The environment of a child process started by a test."""
import os


def child_env(**extra) -> dict:
    """os.environ for a child pytest (or any child process) without pytest-xdist's worker variables: a child
    that inherits PYTEST_XDIST_WORKER believes it is an xdist worker itself (pytest-benchmark then disables
    every benchmark, running each function once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_") and k != "PYTEST_CURRENT_TEST"}
    env.update(extra)
    return env
