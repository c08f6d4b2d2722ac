"""`python -m dtq.cli`: the same as the `dtq` command."""

import sys

from dtq.cli import main

sys.exit(main())
