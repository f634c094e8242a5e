"""splitrack's pytest plugin: `--boards PATH` and the `hw` marker.

Tests marked `hw` need a rack (real or virtual). Without `--boards` they are skipped with the reason.
"""
from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("splitrack")
    group.addoption("--boards", metavar="PATH", default=None,
                    help="rack file (boards.toml) of the boards that hw tests run on")


def pytest_configure(config):
    config.addinivalue_line("markers", "hw: needs a rack of boards (real or virtual): run with --boards PATH")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--boards"):
        return
    skip = pytest.mark.skip(reason="hw test: no rack given (run with --boards boards.toml, or `splitrack rack up`)")
    for item in items:
        if "hw" in item.keywords:
            item.add_marker(skip)
