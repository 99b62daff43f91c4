"""`python -m pilotfish` is the `pilotfish` command."""

import sys

from pilotfish.cli import main

sys.exit(main())
