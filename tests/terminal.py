"""The dlrd command line as an operator meets it: piped (`dlrd query | jq`) or at a terminal (a pty)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def json(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines()]


def cli_env() -> dict[str, str]:
    env = {**os.environ}
    env.pop("COLUMNS", None)
    env.pop("DLRD_CONFIG", None)
    return env


def run_cli(ini: Path, *args: str, check: bool = True) -> Result:
    """`python -m dlrd COMMAND --config INI ARGS...` with stdout piped, as in `dlrd query | jq`."""
    command = [sys.executable, "-m", "dlrd", args[0], "--config", str(ini), *args[1:]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=cli_env())
    if check:
        assert done.returncode == 0, done.stderr
    return Result(done.returncode, done.stdout, done.stderr)


def run_in_terminal(ini: Path, *args: str, columns: int = 80) -> Result:
    """The same command with stdout a pseudo-terminal `columns` wide, as an operator at a shell runs it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    command = [sys.executable, "-m", "dlrd", args[0], "--config", str(ini), *args[1:]]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
                               env=cli_env())
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    stderr = process.stderr.read().decode() if process.stderr else ""
    returncode = process.wait(timeout=30)
    return Result(returncode, b"".join(chunks).decode("utf-8").replace("\r\n", "\n"), stderr)
