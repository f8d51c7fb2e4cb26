"""Errors the user can fix. The CLI prints them as one line, never as a traceback."""

from __future__ import annotations

import errno
import re

# numpy's message for a short fwrite (the errno is lost): "<n> requested and <m> written", in values.
SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


class UserError(Exception):
    """A bad path, value or file: something the person running the command can correct."""


class CorruptFileError(UserError):
    """A file exists but is truncated, tampered with or not in the expected format."""


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: what went wrong, then the file it happened to.

    Some libraries raise OSError with only a path (pyarrow: ``FileNotFoundError(path)``) or only a message
    (numpy's short write: ``"750000 requested and 46048 written"``); both still get a reason and a file."""
    reason = exc.strerror
    short = SHORT_WRITE.search(str(exc)) if not reason else None
    if short is not None:
        reason = f"a write stopped after {short[2]} of {short[1]} values (is the disk full?)"
    elif not reason:
        if isinstance(exc, FileNotFoundError):
            reason = "file not found"
        elif isinstance(exc, PermissionError):
            reason = "permission denied"
        else:
            reason = str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"the disk is full ({reason})"
    where = exc.filename
    if where is None and not exc.strerror and isinstance(exc, FileNotFoundError | PermissionError):
        where = str(exc) or None  # the path was the whole message
    return f"{reason}: {where}" if where is not None else reason
