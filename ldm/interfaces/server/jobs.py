"""The queue: a bounded FIFO of jobs and the one worker thread that owns the model and runs them in order.

A job waits in the queue (its position counts from 1) until the worker takes it; cancelling a waiting job takes it
out, so it never runs; cancelling the running one stops it at its next sampling step. A full queue refuses new jobs
(QueueFull: 503 with Retry-After); so does a queue that is shutting down (SIGTERM: the running job finishes, the
waiting ones are cancelled). Finished jobs are kept, the newest `keep` of them, for the job API's results.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ldm.serve")

WAITING, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class QueueFull(Exception):
    """The queue holds its limit of waiting jobs."""


class ShuttingDown(Exception):
    """The server is stopping (SIGTERM): no new jobs."""


class Stopped(Exception):
    """Raised at a sampling step of a job that was cancelled or ran past its time (its `stop_reason` says which)."""


@dataclass
class Job:
    """One unit of work: `run(job)` on the worker, its result or error kept here."""

    run: Callable[[Job], Any]
    kind: str = "generate"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = WAITING
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    step: int = 0  # sampling steps done, over every image of the job
    steps: int = 0  # sampling steps in all (0: not known yet)
    result: Any = None
    error: tuple[int, str] | None = None  # (HTTP status, message)
    stop_reason: str | None = None  # "cancelled", "interrupted", "timeout": set to stop a running job
    deadline: float | None = None  # monotonic time past which the running job stops
    done: threading.Event = field(default_factory=threading.Event)
    number: int = 0  # submission order, A1111's job_no

    def check_stop(self) -> None:
        """Called at every sampling step: raise Stopped if the job is to stop."""
        if self.stop_reason is None and self.deadline is not None and time.monotonic() > self.deadline:
            self.stop_reason = "timeout"
        if self.stop_reason is not None:
            raise Stopped(self.stop_reason)

    def progress(self) -> float:
        if self.status == DONE:
            return 1.0
        return self.step / self.steps if self.steps else 0.0


class JobQueue:
    def __init__(self, max_waiting: int, keep: int, max_job_seconds: float):
        self.max_waiting = max_waiting
        self.keep = keep
        self.max_job_seconds = max_job_seconds
        self._lock = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._finished: collections.deque[str] = collections.deque()
        self._counter = itertools.count(1)
        self.running: Job | None = None
        self.closing = False
        self._thread = threading.Thread(target=self._work, name="ldm-serve-worker", daemon=True)
        self._setup: Callable[[], None] | None = None

    def start(self, setup: Callable[[], None] | None = None) -> None:
        """Start the worker; `setup` runs first on its thread (the CPU thread count is per thread)."""
        self._setup = setup
        self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._lock:
            if self.closing:
                raise ShuttingDown()
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull()
            job.number = next(self._counter)
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._lock.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """1 for the next job to run, 2 behind it, ...; 0 for one that is not waiting."""
        with self._lock:
            try:
                return self._waiting.index(job) + 1
            except ValueError:
                return 0

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def cancel(self, job: Job, reason: str = "cancelled") -> bool:
        """Take a waiting job out (it never runs) or stop the running one at its next step; False if it finished."""
        with self._lock:
            if job.status == WAITING:
                self._waiting.remove(job)
                self._finish(job, CANCELLED, error=(409, f"the job was {reason} before it ran"))
                return True
            if job.status == RUNNING:
                job.stop_reason = reason
                return True
            return False

    def close(self) -> None:
        """Refuse new jobs and cancel the waiting ones; the running one finishes."""
        with self._lock:
            self.closing = True
            while self._waiting:
                self._finish(self._waiting.popleft(), CANCELLED, error=(503, "the server is shutting down"))
            self._lock.notify_all()

    def forget(self, job: Job) -> None:
        """Drop a finished job's record (a synchronous route's, once answered: its images are not kept)."""
        with self._lock:
            if job.status in FINISHED:
                self._jobs.pop(job.id, None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _finish(self, job: Job, status: str, result: Any = None, error: tuple[int, str] | None = None) -> None:
        """Under the lock: record the outcome, wake its waiters, drop the oldest finished jobs past `keep`."""
        job.status, job.result, job.error, job.finished = status, result, error, time.time()
        job.done.set()
        self._finished.append(job.id)
        while len(self._finished) > self.keep:
            self._jobs.pop(self._finished.popleft(), None)

    def _work(self) -> None:
        if self._setup is not None:
            self._setup()
        while True:
            with self._lock:
                while not self._waiting and not self.closing:
                    self._lock.wait()
                if not self._waiting:
                    return
                job = self._waiting.popleft()
                job.status, job.started = RUNNING, time.time()
                job.deadline = time.monotonic() + self.max_job_seconds
                self.running = job
            status, result, error = self._run(job)
            with self._lock:
                self.running = None
                self._finish(job, status, result, error)

    def _run(self, job: Job) -> tuple[str, Any, tuple[int, str] | None]:
        from ldm.core.errors import LdmError, one_line

        try:
            return DONE, job.run(job), None
        except Stopped as stop:
            if str(stop) == "timeout":
                return FAILED, None, (503, f"the job ran past this server's limit of {self.max_job_seconds:g} s")
            return CANCELLED, None, (409, f"the job was {stop} while it ran")
        except LdmError as exc:
            return FAILED, None, (getattr(exc, "status", 422), one_line(exc))
        except Exception:  # a bug: its traceback goes to the server log, never into an answer
            log.exception("job %s failed", job.id)
            return FAILED, None, (500, "the job failed with an internal error; the server log has the details")
