"""User-facing errors: the CLI prints their message and exits non-zero, never a traceback."""

from __future__ import annotations

import errno
import os
import re


class SimflError(Exception):
    """A mistake in the user's input or environment, with a message meant for people."""


_OS_ERROR = re.compile(r"os error (\d+)")


def os_error_of(e: BaseException, filename: str | os.PathLike | None = None) -> OSError | None:
    """The operating-system error behind `e`, naming `filename` where `e` names no file; None if there is none.

    Libraries that do their own I/O (polars' writers) report a full disk as "... (os error 28)", as their own
    error type or as an OSError without errno: that becomes OSError(ENOSPC) here, reported like any other."""
    own = e if isinstance(e, OSError) else None
    code = own.errno if own is not None else None
    if code is None:
        m = _OS_ERROR.search(str(e))
        code = int(m.group(1)) if m and int(m.group(1)) in errno.errorcode else None
    if code is None:
        return own
    name = own.filename if own is not None and own.filename is not None else filename
    if own is not None and own.errno is not None and own.filename == name:
        return own
    return OSError(code, os.strerror(code), None if name is None else os.fspath(name))
