"""``python -m iterflow.cli``: the same as ``flowctl``."""

import sys

from iterflow.cli import main

sys.exit(main())
