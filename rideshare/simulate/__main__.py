"""python -m rideshare.simulate --help"""

import sys

from rideshare.simulate.cli import main

sys.exit(main())
