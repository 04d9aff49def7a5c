"""Lets `python -m dlrd` behave exactly like the installed `dlrd` script."""

import sys

from dlrd.launch import main

sys.exit(main())
