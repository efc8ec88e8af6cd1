"""``python -m nodes --config FILE``: run one storage node."""

import sys

from .server import main

sys.exit(main())
