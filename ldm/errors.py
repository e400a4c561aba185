"""The one base class of the project's errors.

Everything the library raises for a bad input, file, setting or environment derives from `LdmError`
(most also from the built-in class they were before, ValueError, OSError, ..., so existing callers'
`except ValueError` still works). The CLI and the app catch `LdmError` alone and show its first
line; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class LdmError(Exception):
    """A problem the user can fix (bad argument, unreadable file, unsuitable model): shown as one line."""


class InvalidOptionError(LdmError, ValueError):
    """A command-line or API option with a value that cannot be used."""


class MissingFileError(LdmError, FileNotFoundError):
    """A file the user named that is not there."""


class ResourceLimitError(LdmError, ValueError):
    """A request that would need more memory than the limit allows (see ldm.core.limits)."""


def one_line(exc: BaseException) -> str:
    """The line to show for an error: its message's first line.

    An error raised in a DataLoader worker comes back re-raised with the message "Caught X in DataLoader
    worker process N." followed by the worker's traceback; the line worth showing is the worker's own
    message, on the traceback's last line ("module.X: message").
    """
    lines = str(exc).splitlines()
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        marker = f"{type(exc).__name__}: "
        last = lines[-1]
        if marker in last:
            return last[last.index(marker) + len(marker) :]
    return lines[0]
