"""Sphinx configuration of splitrack's documentation site (MyST Markdown, furo, sphinx-argparse, autodoc).
`make docs` builds it with -W: every warning is an error."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's splitting/ and harness/ (autodoc, the CLI parser)
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "splitrack"
author = "splitrack's developers"
copyright = "2026, splitrack's developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxarg.ext",
    "plaindoc",  # the docstrings are plain text: see _ext/plaindoc.py
    "pytest_options",  # the pytest plugin's options, from its own pytest_addoption
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence", "deflist"]
# unlabelled code blocks are terminal output and commands, not Python: shown as they are
highlight_language = "none"
myst_heading_anchors = 3

html_theme = "furo"
html_title = "splitrack"
html_static_path: list[str] = []
html_show_sourcelink = False  # the pages' sources are the repository's docs/*.md
html_copy_source = False
# nothing from the network: no web fonts, no CDN scripts (a test opens every page with requests to the
# outside made to fail); MathJax is only loaded on pages with math, and there is none
html_theme_options = {"navigation_with_keys": True}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
nitpicky = False
