"""Errors a user can act on: the CLI prints them as one line (no traceback) and exits with status 2."""


class UserError(Exception):
    """Bad input: the message says what was wrong and what to do instead."""
