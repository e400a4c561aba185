"""`python -m ldm ...` runs the `ldm` command."""

import sys

from ldm.interfaces.cli.main import main

sys.exit(main())
