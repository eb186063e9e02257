"""``python -m skpose``: the command line."""

import sys

from skpose.cli import main

sys.exit(main())
