"""`python -m probe.cli ...`, the same as `probe ...`."""

import sys

from probe.cli import main

sys.exit(main())
