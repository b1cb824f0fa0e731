"""``python -m feed_worker``: see feed_worker.main."""

import sys

from feed_worker.main import main

sys.exit(main())
