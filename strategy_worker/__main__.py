import sys

from strategy_worker.main import main

sys.exit(main())
