"""python -m rideshare: the ``rideshare`` command (rideshare.cli)."""

import sys

from rideshare.cli import main

sys.exit(main())
