#!/usr/bin/env python
"""Evaluate the text-to-image model on the emoji data: the README's results table.

    python scripts/evaluate.py [--config CFG --ckpt WEIGHTS] [--inception-weights inception_v3.pth] [--out results.json]

Same as `ldm eval ...` (all of its options pass through); see ldm/evaluation/report.py for what the metrics mean.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.interfaces.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
