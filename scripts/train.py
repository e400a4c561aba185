#!/usr/bin/env python
"""Same as `ldm train ...` (see configs/train/README.md); usable where the console script is not installed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.interfaces.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
