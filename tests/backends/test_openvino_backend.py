"""The OpenVINO backend's tests (tests/backends/openvino_cases.py), run in a process of their own.

The full suite's process died with a segmentation fault in its later training tests (which fork) once these cases
had run in it, though each part passes alone; OpenVINO's runtime keeps a thread pool, which a fork does not survive
well. So the suite's own process never imports it: the cases run under a child pytest, and this test passes only when
every one of them passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("openvino_cases.py")
EXPECTED = 4  # the cases in openvino_cases.py; a case that is skipped or missing fails this test


def test_the_openvino_cases_all_pass_in_their_own_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path), str(CASES)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert summary.startswith(f"{EXPECTED} passed") and "skipped" not in summary, summary
