"""PyInstaller entry point: the frozen binary is the `dlrd` command."""

import sys

from dlrd.cli import main

sys.exit(main())
