import sys

from position_worker.main import main

sys.exit(main())
