"""PyInstaller entry point: the frozen binary is the `dlrd` command."""

import sys

from dlrd.launch import main

sys.exit(main())
