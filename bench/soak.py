"""Soak dlrd: N keep-alive connections POSTing receipts for a while, watching threads and memory.

Starts `dlrd serve` on a free loopback port with a throw-away data
directory, drives it with wrk (when installed) or a built-in asyncio load
generator, samples the daemon's thread count (/proc/PID/task) and RSS
every half second, stops it with SIGTERM, and prints the figures. The
thread count is reported as measured, not checked: the threaded server
has a pool of request threads that grows with the connections it serves
at once (up to max_connections), beside the main thread and its accept,
idle-selector, writer and checkpoint threads; the asyncio design ran
three in all.

    .venv/bin/python bench/soak.py                      # 64 connections, 60 s
    .venv/bin/python bench/soak.py --connections 200 --duration 30 --generator python

Every request carries a new MessageIdentifier, so each one is a committed
write, not a duplicate. Only loopback is ever targeted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = (ROOT / "tests" / "envelopes" / "seed.xml").read_bytes()

WRK_SCRIPT = """
local template = [==[%s]==]
local counter = 0
local next_thread = 0
function setup(thread)
  next_thread = next_thread + 1
  thread:set("prefix", "W" .. next_thread .. "X")
end
function request()
  counter = counter + 1
  local body = string.gsub(template, "3C7D98A4", prefix .. counter)
  return wrk.format("POST", "/", {["Content-Type"] = "text/soap"}, body)
end
function done(summary, latency, requests)
  io.write(string.format("SOAK requests=%%d errors=%%d non2xx=%%d p50_ms=%%.2f p99_ms=%%.2f max_ms=%%.2f\\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def threads_and_rss(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))
    return threads, rss


class Sampler(threading.Thread):
    """Reads the daemon's thread count and RSS twice a second until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopped.is_set():
            try:
                self.samples.append((time.monotonic() - started, *threads_and_rss(self.pid)))
            except (OSError, AttributeError):
                return
            self.stopped.wait(0.5)


def start_daemon(directory: Path, max_connections: int) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    ini = directory / "dlrd.ini"
    ini.write_text(
        "[server]\nlisten = 127.0.0.1:0\npath = /\n"
        f"max_connections = {max_connections}\n"
        # Every connection comes from 127.0.0.1: without this only 32 of them would be let in.
        f"max_connections_per_source = {max_connections}\n"
        f"[storage]\ndatabase = {directory / 'dlrd.db'}\n[journal]\ndirectory = {directory}\n"
    )
    with open(directory / "dlrd.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "dlrd", "--config", str(ini), "serve"],
                                   stdout=log, stderr=log, cwd=directory)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", (directory / "dlrd.log").read_text())
        if match:
            return process, ("127.0.0.1", int(match.group(1)))
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"dlrd did not start:\n{(directory / 'dlrd.log').read_text()}")


def run_wrk(address: tuple[str, int], connections: int, duration: int, directory: Path) -> dict[str, float]:
    script = directory / "soak.lua"
    script.write_text(WRK_SCRIPT % SEED.decode("utf-8"))
    threads = min(2, connections)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
               f"http://{address[0]}:{address[1]}/"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"SOAK requests=(\d+) errors=(\d+) non2xx=(\d+) p50_ms=([\d.]+) p99_ms=([\d.]+) "
                      r"max_ms=([\d.]+)", output)
    if match is None:
        raise SystemExit(f"unexpected wrk output:\n{output}")
    keys = ("requests", "errors", "non2xx", "p50_ms", "p99_ms", "max_ms")
    return {key: float(value) for key, value in zip(keys, match.groups())}


def run_python(address: tuple[str, int], connections: int, duration: int) -> dict[str, float]:
    """A keep-alive POST loop per connection on one event loop: the fallback when wrk is missing."""
    latencies: list[float] = []
    failures = [0, 0]

    async def connection(number: int, deadline: float) -> None:
        reader, writer = await asyncio.open_connection(*address)
        sent = 0
        try:
            while time.monotonic() < deadline:
                sent += 1
                body = SEED.replace(b"3C7D98A4", f"P{number}X{sent}".encode())
                started = time.monotonic()
                writer.write(b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Type: text/soap\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
                await reader.readexactly(length)
                latencies.append(time.monotonic() - started)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures[1] += 1
        except (OSError, asyncio.IncompleteReadError):
            failures[0] += 1
        finally:
            writer.close()

    async def main() -> None:
        deadline = time.monotonic() + duration
        await asyncio.gather(*(connection(number, deadline) for number in range(connections)))

    asyncio.run(main())
    latencies.sort()
    return {
        "requests": len(latencies), "errors": failures[0], "non2xx": failures[1],
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else 0,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2) if latencies else 0,
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    arguments = parser.parse_args()
    generator = arguments.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"

    with tempfile.TemporaryDirectory(prefix="dlrd-soak-") as temporary:
        directory = Path(temporary)
        process, address = start_daemon(directory, max(256, arguments.connections * 2))
        try:
            time.sleep(1)  # let the daemon settle before the baseline sample
            threads_start, rss_start = threads_and_rss(process.pid)
            sampler = Sampler(process.pid)
            sampler.start()
            started = time.monotonic()
            if generator == "wrk":
                load = run_wrk(address, arguments.connections, arguments.duration, directory)
            else:
                load = run_python(address, arguments.connections, arguments.duration)
            elapsed = time.monotonic() - started
            threads_end, rss_end = threads_and_rss(process.pid)
            sampler.stopped.set()
            sampler.join()
        finally:
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(30)
        with sqlite3.connect(directory / "dlrd.db") as database:
            stored = database.execute("SELECT count(*) FROM receipts").fetchone()[0]
        tracebacks = (directory / "dlrd.log").read_text().count("Traceback")

    threads = [threads for _, threads, _ in sampler.samples]
    rss = [rss for _, _, rss in sampler.samples]
    figures = {
        "generator": generator, "connections": arguments.connections, "seconds": round(elapsed, 1),
        **load, "requests_per_second": round(load["requests"] / elapsed, 1), "receipts_stored": stored,
        "threads_start": threads_start, "threads_min": min(threads), "threads_max": max(threads),
        "threads_end": threads_end, "rss_start_kib": rss_start, "rss_peak_kib": max(rss),
        "rss_end_kib": rss_end, "samples": len(sampler.samples), "exit_code": exit_code,
        "tracebacks_in_log": tracebacks, "cpus": os.cpu_count(),
    }
    if arguments.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>22}: {value}")
    return 0 if exit_code == 0 and not tracebacks else 1


if __name__ == "__main__":
    sys.exit(main())
