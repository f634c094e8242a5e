"""`.. pytest-plugin-options::` renders the options splitrack's pytest plugin adds, read from its own
`pytest_addoption` (a recording parser stands in for pytest's), so that the page cannot drift from the code."""
from __future__ import annotations

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


class _Group:
    def __init__(self, into):
        self.into = into

    def addoption(self, *names, **kw):
        self.into.append((names, kw))


class _Parser:
    def __init__(self):
        self.options = []

    def getgroup(self, name, description=""):
        return _Group(self.options)

    def addoption(self, *names, **kw):
        self.options.append((names, kw))

    def addini(self, *a, **kw):  # the plugin adds no ini values today; one would show up as missing here
        raise NotImplementedError("pytest_options.py: document ini values before adding them")


def options():
    """[(names, metavar or '', default, help)] of harness.pytest_plugin's options, in the order it adds them."""
    from harness import pytest_plugin

    parser = _Parser()
    pytest_plugin.pytest_addoption(parser)
    out = []
    for names, kw in parser.options:
        flag = kw.get("action") in ("store_true", "store_false")
        out.append((names, "" if flag else kw.get("metavar", ""), None if flag else kw.get("default"), kw["help"]))
    return out


class PytestPluginOptions(SphinxDirective):
    has_content = False

    def run(self):
        rows = [".. list-table::", "   :header-rows: 1", "", "   * - option", "     - default", "     - meaning"]
        for names, metavar, default, help_ in options():
            opt = ", ".join(f"``{n}{' ' + metavar if metavar else ''}``" for n in names)
            rows += [f"   * - {opt}", f"     - {'' if default is None else '``%s``' % default}",
                     f"     - {help_}"]
        holder = nodes.container()
        self.state.nested_parse(StringList(rows), self.content_offset, holder)
        return list(holder.children)


def setup(app):
    app.add_directive("pytest-plugin-options", PytestPluginOptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
