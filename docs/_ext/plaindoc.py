"""splitrack's docstrings are plain text (backticks for code, aligned columns, dash lists), not
reStructuredText. This hook hands autodoc each docstring as reStructuredText that says the same: `name`
becomes an inline literal, characters reST would read as markup (* | _ \\) are escaped, and a docstring whose
layout reST cannot take as prose (indented tables, unexpected indentation) is shown as it is written, in a
literal block. Which of the two a docstring gets is decided by parsing it with docutils: a docstring never
produces a warning, so `make docs -W` stays strict for the pages themselves."""
from __future__ import annotations

import re

from docutils import nodes
from docutils.core import publish_doctree

_TICK = re.compile(r"`+([^`]+?)`+")
_TRAILING_UNDERSCORE = re.compile(r"(?<=\w)_(?=\W|$)")


def _escape(text: str) -> str:
    text = text.replace("\\", "\\\\")
    for ch in "*|":
        text = text.replace(ch, "\\" + ch)
    return _TRAILING_UNDERSCORE.sub(r"\\_", text)


def _line(line: str) -> str:
    """One line: code spans as inline literals, the rest escaped."""
    out, pos = [], 0
    for m in _TICK.finditer(line):
        out.append(_escape(line[pos:m.start()]))
        code = m.group(1).strip()
        out.append(f"``{code}``" if code else "")
        pos = m.end()
    out.append(_escape(line[pos:]))
    return "".join(out)


def _clean(rst: str) -> bool:
    """True when docutils reads `rst` without a warning."""
    doc = publish_doctree(rst, settings_overrides={"report_level": 5, "halt_level": 5, "warning_stream": False})
    return not any(m["level"] >= 2 for m in doc.findall(nodes.system_message))


def as_rst(lines: list[str]) -> list[str]:
    prose = [_line(ln) for ln in lines]
    if _clean("\n".join(prose)):
        return prose
    return ["::", ""] + ["   " + ln for ln in lines] + [""]


def _process(app, what, name, obj, options, lines):
    if lines:
        lines[:] = as_rst(list(lines))


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
