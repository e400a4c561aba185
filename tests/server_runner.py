"""The real `ldm serve` in a process of its own, and a plain HTTP client for it (http.client: no extra dependency).

with ServerProcess(["--ckpt", "tiny.safetensors", "--config", "tiny.yaml"], cwd=folder) as server:
    status, headers, body = server.call("POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 2})
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).parents[1]
START_SECONDS = 90  # importing torch and loading a tiny model, on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], cwd: str | Path, host: str = "127.0.0.1", auth: str | None = None):
        self.port = free_port()
        self.host = host
        self.auth = auth
        self.log_path = Path(cwd) / f"server-{self.port}.log"
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        env.setdefault("OMP_NUM_THREADS", "1")
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "ldm", "serve", "--host", host, "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> ServerProcess:
        self.wait_ready()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.call("GET", "/ldm/v1/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start in {START_SECONDS} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 120,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body or None) of one request; `raw` sends bytes as they are."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        sent = {"Content-Type": "application/json"} if body is not None or raw is not None else {}
        if self.auth:
            sent["Authorization"] = "Basic " + base64.b64encode(self.auth.encode()).decode()
        sent.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            payload = response.read()
            answer = json.loads(payload) if payload else None
            return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
        finally:
            connection.close()


def png(image: Image.Image) -> str:
    """A PIL image as the base64 PNG an A1111 client sends."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(image: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image)))
