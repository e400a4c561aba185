"""Runs `python -m ldm.interfaces.cli.main` once per case, each case in a process of its own, forked from one that has already
imported torch and Lightning: a fresh interpreter spends 3-5 s on those imports alone, a fork a fraction of it.

    python tests/cli_runner.py < cases.json > results.json

cases: a JSON list of {"argv": [...], "cwd": dir or null, "env": {name: value}, "timeout": seconds,
"watch": dir or null}.
results: a JSON list of {"rc": exit status (-N: killed by signal N; "timeout"), "stdout": str, "stderr": str,
"changed": the files under `watch` that the case added, removed or changed}.

Each child runs the module as `python -m ldm.interfaces.cli.main` does (runpy, as __main__), with file descriptors 1 and 2 on
files of its own, and an uncaught exception goes through the interpreter's own hook: a traceback shows
exactly as it would in a real run.

Preloading costs seconds per runner, and a test session starts a dozen runners: tests/conftest.py starts one
preloaded server (`python tests/cli_runner.py --serve SOCKET`) and names its socket in LDM_TEST_RUNNER_SOCKET. A runner
started with that variable hands its standard streams, folder and environment to the server, which forks a copy of
itself (preloaded, nothing else run) that does what this process would; where the server is not there or was started
with another environment (what the imports read), the runner preloads and runs the cases itself.
"""  # noqa: E501

from __future__ import annotations

import hashlib
import json
import os
import runpy
import signal
import socket
import sys
import tempfile
import time
import traceback

POLL_SECONDS = 0.02


def preload() -> None:
    """Import what the commands import, before any fork (no torch op runs here, so no thread pool is forked)."""
    import lightning.pytorch  # noqa: F401
    import open_clip  # noqa: F401

    import ldm.interfaces.cli.main
    import ldm.models.latent_diffusion
    import ldm.tasks.img2img
    import ldm.tasks.inpaint
    import ldm.tasks.upscale
    import ldm.tasks.walk
    import ldm.training.run

    ldm.interfaces.cli.main.build_parser()  # imports every command module


def snapshot(root: str | None) -> dict[str, str]:
    """Every file under root (relative path -> SHA-256 of its bytes); {} without a root."""
    if not root:
        return {}
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return files


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
    return 1


def run_child(case: dict, stdout_path: str, stderr_path: str) -> None:
    """In the forked child: become `python -m ldm.interfaces.cli.main ARGV` and never return."""
    code = 1
    try:
        for fd, path in ((1, stdout_path), (2, stderr_path)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(target, fd)
            os.close(target)
        os.chdir(case.get("cwd") or os.getcwd())
        os.environ.update(case.get("env") or {})
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = ["ldm", *case["argv"]]
        sys.modules.pop(
            "ldm.interfaces.cli.main", None
        )  # run afresh as __main__, as `python -m` does (runpy warns otherwise)
        try:
            runpy.run_module("ldm.interfaces.cli.main", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:  # noqa: BLE001 - what the interpreter does with any uncaught exception
            sys.excepthook(*sys.exc_info())
            code = 1
    except BaseException:  # noqa: BLE001 - a failure of this harness itself: say it, never return into the parent's code
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_case(case: dict, scratch: str, number: int) -> dict:
    stdout_path, stderr_path = (os.path.join(scratch, f"{number}.{name}") for name in ("out", "err"))
    before = snapshot(case.get("watch"))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        run_child(case, stdout_path, stderr_path)
    deadline = time.monotonic() + float(case.get("timeout", 120))
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(POLL_SECONDS)
    rc = "timeout" if status is None else os.waitstatus_to_exitcode(status)
    after = snapshot(case.get("watch"))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    with (
        open(stdout_path, encoding="utf-8", errors="replace") as out,
        open(stderr_path, encoding="utf-8", errors="replace") as err,
    ):
        return {"rc": rc, "stdout": out.read(), "stderr": err.read(), "changed": changed}


def run_cases() -> int:
    """The cases on stdin, run one by one; their results on stdout (once preloaded)."""
    cases = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as scratch:
        results = [run_case(case, scratch, n) for n, case in enumerate(cases)]
    json.dump(results, sys.stdout)
    return 0


SOCKET_VARIABLE = "LDM_TEST_RUNNER_SOCKET"
# Set by pytest for each test, so never the same in the server as in a runner; no import reads it.
PER_TEST_VARIABLES = {"PYTEST_CURRENT_TEST"}


def same_environment(a: dict[str, str], b: dict[str, str]) -> bool:
    return {k: v for k, v in a.items() if k not in PER_TEST_VARIABLES} == {
        k: v for k, v in b.items() if k not in PER_TEST_VARIABLES
    }


def delegate(path: str) -> int | None:
    """Have the server at path run this runner's cases, on this process's streams: their exit status, or None where
    the server cannot (none there, another environment): then this process runs them itself."""
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(path)
    except OSError:
        return None
    with connection, connection.makefile("rb") as replies:
        request = json.dumps({"cwd": os.getcwd(), "env": dict(os.environ)}).encode() + b"\n"
        try:
            socket.send_fds(connection, [b"R"], [0, 1, 2])
            connection.sendall(request)
        except OSError:  # e.g. a standard stream closed: nothing to hand over
            return None
        if replies.readline().strip() != b"ok":
            return None
        status = replies.readline().strip()  # sent by the server's copy when the cases are done
    if not status:
        print("cli_runner: the server's copy ended without an exit status", file=sys.stderr)
        return 1
    return int(status)


def serve_one(connection: socket.socket, listener: socket.socket, started_with: dict[str, str]) -> None:
    """In the server: run one runner's cases in a forked copy of this preloaded process, or say "no"."""
    _, fds, _, _ = socket.recv_fds(connection, 1, 3)
    try:
        with connection.makefile("rb") as lines:
            request = json.loads(lines.readline())
        # what the runner would have preloaded with (the imports set variables of their own, kept as in a runner)
        if len(fds) != 3 or not same_environment(request["env"], started_with):
            connection.sendall(b"no\n")
            return
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            code = 1
            try:
                connection.sendall(b"ok\n")  # from here on the runner waits for this copy's exit status
                listener.close()
                for fd, target in zip((0, 1, 2), fds):
                    os.dup2(target, fd)
                    os.close(target)
                os.chdir(request["cwd"])
                for name in PER_TEST_VARIABLES:
                    if name in request["env"]:
                        os.environ[name] = request["env"][name]
                    else:
                        os.environ.pop(name, None)
                code = run_cases()
            except BaseException:  # noqa: BLE001 - as in run_child: say it, never return into the server's loop
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    connection.sendall(b"%d\n" % code)
                finally:
                    os._exit(code)
    finally:
        for fd in fds:
            os.close(fd)


def serve(path: str) -> int:
    """Listen at path (at once, so runners started meanwhile wait rather than preload), preload, then serve each
    runner until the process that started this one is gone."""
    parent = os.getppid()
    started_with = dict(os.environ)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    preload()
    listener.settimeout(1.0)
    while os.getppid() == parent:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # the copies that have finished
                pass
        except ChildProcessError:
            pass
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        with connection:
            connection.settimeout(None)
            serve_one(connection, listener, started_with)
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        return serve(sys.argv[2])
    if os.environ.get(SOCKET_VARIABLE):
        status = delegate(os.environ[SOCKET_VARIABLE])
        if status is not None:
            return status
    preload()
    return run_cases()


if __name__ == "__main__":
    sys.exit(main())
