import os

import pytest
import torch

# Tests are small; two threads keep them fast on the 2-core CI machine without oversubscribing.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The original SD 2.x tensor manifests (names and shapes only), kept with the tests so a clone runs them anywhere.
SD_FORMAT = os.path.join(os.path.dirname(__file__), "sd-format")


@pytest.fixture(scope="session")
def sd_format_dir():
    path = os.environ.get("LDM_SD_FORMAT", SD_FORMAT)
    assert os.path.isdir(path), f"SD format manifests not found at {path} (set LDM_SD_FORMAT)"
    return path
