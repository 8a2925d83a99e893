"""``python -m rbdpy.cli``: how the CLI starts its own daemons (the OSDs)."""

import sys

from rbdpy.cli import main

sys.exit(main())
