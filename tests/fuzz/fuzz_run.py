"""What both atheris harnesses share: libFuzzer's arguments, with the corpus and dictionary filled in."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent


def run(name: str, test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz `test_one_input` on corpus/<name>/ with <name>.dict, unless the command line says otherwise."""
    corpus = HERE / "corpus" / name
    arguments = list(sys.argv)
    if not any(not argument.startswith("-") for argument in arguments[1:]):
        arguments.append(str(corpus))
    if not any(argument.startswith("-dict=") for argument in arguments):
        arguments.append("-dict=" + str(HERE / f"{name}.dict"))
    if not any(argument.startswith("-max_len=") for argument in arguments):
        arguments.append("-max_len=16384")
    atheris.Setup(arguments, test_one_input)
    atheris.Fuzz()
