"""One live training per run folder: rank 0 holds an operating-system lock on `run.lock` in it for the whole run.

Two runs on one folder would write each other's checkpoints and exports. The lock is `flock` on an open file: the
kernel drops it when the process ends however it ends (kill -9 included), so a killed run never blocks its own
--resume; the file a killed run leaves holds no lock (only the lock on it matters). A run that ends removes it.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from ldm.core.errors import LdmError

LOCK_NAME = "run.lock"
# A killed run's forked DataLoader workers keep the lock's open file (and so the lock) until they notice their
# parent is gone, which PyTorch checks every 5 s: a lock whose recorded owner is dead is waited for this long.
ORPHAN_WAIT_SECONDS = 15.0


class RunDirBusyError(LdmError, BlockingIOError):
    """The run folder is in use by another training that is still running."""


class RunFolderLock:
    """Holds the run folder's lock from `acquire()` until `release()` (or the process's end)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunFolderLock:
        """Take the lock, or raise RunDirBusyError naming the process that holds it. A no-op without fcntl
        (Windows)."""
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = _recorded_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if owner is not None and _alive(owner):
                    raise RunDirBusyError(
                        f"{self.path.parent} is in use by a running training (pid {owner}); wait "
                        "for it to finish or stop it, or choose another logging.run_dir"
                    ) from None
                deadline = deadline or time.monotonic() + ORPHAN_WAIT_SECONDS  # a dead owner's workers: soon gone
                if time.monotonic() > deadline:
                    raise RunDirBusyError(
                        f"{self.path.parent} is in use by another training (its lock is held); "
                        "choose another logging.run_dir"
                    ) from None
                time.sleep(0.2)
                continue
            if _same_file(fd, self.path):
                break
            os.close(fd)  # locked a file the run before us removed on release: lock the one there now
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file (while still holding its lock, so no other run holds a lock on a removed file) and
        drop the lock: a finished or refused run leaves its folder as it found it."""
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)  # closing the last descriptor of the open file drops the flock
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _recorded_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or "x")
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def is_rank_zero_process() -> bool:
    """Whether this process will be the run's rank 0, known before the Trainer exists: the variables launchers set
    (torchrun's RANK, Lightning's LOCAL_RANK and NODE_RANK for the processes it starts, SLURM's SLURM_PROCID)."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"):
        value = os.environ.get(name, "0").strip() or "0"
        if value != "0":
            return False
    return True
