"""Lets `python -m dlrd` behave exactly like the installed `dlrd` script."""

import sys

from dlrd.cli import main

sys.exit(main())
