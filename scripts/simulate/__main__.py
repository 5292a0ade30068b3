"""python -m scripts.simulate --help"""

import sys

from scripts.simulate.cli import main

sys.exit(main())
