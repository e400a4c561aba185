"""`ldm serve` under load: requests/min and p50/p95 latency with 1, 4 and 16 concurrent clients, at the default
model's own settings, and at 1 client the ratio to the Python API's images/min measured in the same run.

    python benchmarks/serve.py [--seconds 20] [--clients 1 4 16] [--threads 1]

The Python API (load_model + txt2img, one image per call) runs first in this process, then the server in a process of
its own with the same thread count; each client sends A1111 txt2img requests of one image (a prompt and a seed, every
other field left to the model) one after another, over http.client. The figures go to docs/serve.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).parents[1]
PROMPTS = ["red heart", "green apple", "yellow star", "smiling face", "blue car", "pizza"]


def python_api(seconds: float, threads: int) -> float:
    """Images/min of txt2img(model, prompt, seed) calls, one image each, for about `seconds`."""
    from ldm.formats.load import load_model
    from ldm.tasks.txt2img import txt2img

    torch.set_num_threads(threads)
    model = load_model()
    txt2img(model, "warm up", seed=0, progress=False)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        txt2img(model, PROMPTS[count % len(PROMPTS)], seed=count, progress=False)
        count += 1
    return count / (time.perf_counter() - start) * 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, body: dict) -> float:
    """Seconds for one txt2img request (checked to answer 200 with one image)."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/sdapi/v1/txt2img", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    if response.status != 200 or len(answer["images"]) != 1:
        raise RuntimeError(f"the server answered {response.status}: {answer}")
    return time.perf_counter() - start


def load(port: int, clients: int, seconds: float) -> dict[str, float]:
    """requests/min, p50 and p95 latency (s) of `clients` clients sending requests back to back for `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(number: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            took = request(port, {"prompt": PROMPTS[(number + i) % len(PROMPTS)], "seed": number * 10_000 + i})
            with lock:
                latencies.append(took)
            i += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests_per_min": len(ordered) / elapsed * 60,
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "requests": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="measuring time per setting")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the Python API and of the server")
    args = parser.parse_args()
    api = python_api(args.seconds, args.threads)
    print(f"Python API: {api:.1f} images/min ({args.threads} thread(s))", flush=True)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "ldm", "serve", "--port", str(port), "--threads", str(args.threads)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                request(port, {"prompt": "warm up", "seed": 0})
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.5)
        print("| clients | requests/min | p50 latency | p95 latency | requests | vs Python API |")
        print("|---|---|---|---|---|---|")
        for clients in args.clients:
            row = load(port, clients, args.seconds)
            ratio = f"{row['requests_per_min'] / api:.2f}x" if clients == 1 else ""
            print(f"| {clients} | {row['requests_per_min']:.1f} | {row['p50_s'] * 1000:.0f} ms | "
                  f"{row['p95_s'] * 1000:.0f} ms | {row['requests']} | {ratio} |", flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
