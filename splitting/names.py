"""Names that travel to boards (partition names, board names): one pattern, checked where they enter.

Such a name becomes part of file names on a board (`agent-<partition>.log`) and of messages; it must be
data, never anything a shell or a path could read otherwise. Letters, digits, '.', '_', '-', starting with
a letter or digit (so never '-x', '.', '..' or empty), at most 64 characters.
"""
from __future__ import annotations

import re

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_NAME = re.compile(NAME_PATTERN)


def is_valid_name(name: object) -> bool:
    """True when `name` is a str that matches NAME_PATTERN in full (letters, digits, '.', '_', '-', first a
    letter or digit, 1 to 64 characters)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None  # fullmatch: no trailing newline


def name_problem(what: str, name: object) -> str:
    """'' for a valid name, else one line saying why and what to do."""
    if is_valid_name(name):
        return ""
    return (f"{what} {name!r} is not a valid name: use letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit, at most 64 characters")
