"""The `dlrd` command's first step: lower the priority of the commands that only read, then run the CLI.

`query`, `stats` and `quarantine` beside the daemon on a small VPS take a
core its receipts need; at the lowest priority the scheduler gives them
what the daemon leaves, all of an idle core. It is done here, from a look
at the subcommand's word and before dlrd.cli and its imports load, because
those imports cost as much CPU as a `stats` of the last day: with a `stats`
loop and a full query beside it, the daemon's p99 at 16 keep-alive
connections rose 58 to 64 % at nice 0, 24 % when dlrd lowered itself after
parsing its arguments, and did not move (-5 %) when the whole process ran
at nice 19.
"""

from __future__ import annotations

import os
import sys

READ_ONLY_NICENESS = 19
READING_COMMANDS = frozenset({"query", "stats", "quarantine"})


def main() -> int:
    yield_cpu_if_reading(sys.argv[1:])
    from dlrd.cli import main as run_cli

    return run_cli()


def yield_cpu_if_reading(argv: list[str]) -> None:
    """Lower this process to READ_ONLY_NICENESS when the subcommand (the first word that is neither an
    option nor --config's value) only reads."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            if word in READING_COMMANDS:
                try:
                    os.nice(READ_ONLY_NICENESS)
                except OSError:
                    pass  # already as nice as it may be: nothing to give
            return
