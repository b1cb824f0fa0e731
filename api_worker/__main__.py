"""``python -m api_worker``: see api_worker.main."""

import sys

from api_worker.main import main

sys.exit(main())
