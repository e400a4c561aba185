"""What a path names: every file the user gives (weights, configs) is checked to be a regular file before it is
opened, so a FIFO, a device or a folder is named as what it is instead of hanging or failing as "not found"."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ldm.core.errors import LdmError


def check_regular_file(path: str | os.PathLike, what: str, error: type[LdmError]) -> Path:
    """The path, if it names a regular file; else `error` saying what it is instead (one line: what, path, kind).

    Stat only, never open: opening a FIFO for reading blocks until a writer comes, and a device such as
    /dev/zero reads forever; neither is "not found"."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device file"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a file"
        )
        raise error(f"{what} {path} is not a regular file ({kind})")
    return path
