"""`python -m loraedit.cli ...`: the same as the `loraedit` command."""

import sys

from . import main

sys.exit(main())
