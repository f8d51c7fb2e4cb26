"""Errors the user can fix. The CLI prints them as one line, never as a traceback."""


class UserError(Exception):
    """A bad path, value or file: something the person running the command can correct."""


class CorruptFileError(UserError):
    """A file exists but is truncated, tampered with or not in the expected format."""
