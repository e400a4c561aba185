"""Build the emoji dataset (see ldm/data/emoji.py): python scripts/make_emoji_dataset.py --out data/emoji"""

import sys

from ldm.interfaces.cli.main import main

if __name__ == "__main__":  # the same as `ldm data emoji ...` (one command-line parser)
    sys.exit(main(["data", "emoji", *sys.argv[1:]]))
