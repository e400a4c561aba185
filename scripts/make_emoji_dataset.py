"""Build the emoji dataset (see ldm/data/emoji.py): python scripts/make_emoji_dataset.py --out data/emoji"""
import sys

from ldm.data.emoji import main

if __name__ == "__main__":
    sys.exit(main())
