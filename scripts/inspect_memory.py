#!/usr/bin/env python3
"""Memory inspector: attach read-only to a running noblink's shared memory and show it.

Usage: scripts/inspect_memory.py [--run-dir DIR] [--json] [--watch [SECONDS]] [--candles N]
Same as `noblink inspect`. Exits 1 when no system is running.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from state.inspect import main

if __name__ == "__main__":
    sys.exit(main())
