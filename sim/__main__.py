"""``python -m sim ...`` is ``noblink sim ...``."""

import sys

from sim.cli import main

sys.exit(main(sys.argv[1:]))
