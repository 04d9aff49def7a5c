"""The bounded pool of request threads: started when work comes, up to a limit, retired when idle.

socketserver's ThreadingMixIn starts a thread per connection and never
says no. Here a thread is started only when no idle one is free, never
more than the limit (dlrd sizes it to max_connections, so a connection
always finds one), and one that has had nothing to do for
WORKER_IDLE_SECONDS ends, so a burst's threads and their stacks are
given back.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("dlrd.server")

WORKER_IDLE_SECONDS = 5.0


class WorkerPool:
    """Runs `work(task)` for each submitted task in one of at most `limit` threads."""

    def __init__(self, work: Callable[[Any], None], limit: int, name: str = "dlrd-request") -> None:
        self.limit = limit
        self._work = work
        self._name = name
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers = 0
        self._idle = 0  # waiting for a task and not yet claimed by a submit
        self._started = 0
        self._stopping = False

    @property
    def size(self) -> int:
        """Threads alive now."""
        return self._workers

    def submit(self, task: Any) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # claimed: that worker's next get() is this task
                start = False
            else:
                start = self._workers < self.limit
                if start:
                    self._workers += 1
                    self._started += 1
            number = self._started
        self._tasks.put(task)
        if start:
            threading.Thread(target=self._run, name=f"{self._name}-{number}", daemon=True).start()

    def stop(self) -> None:
        """Let every worker finish its task and end (they are daemon threads: nothing waits for them)."""
        with self._lock:
            self._stopping = True
            workers = self._workers
        for _ in range(workers):
            self._tasks.put(None)

    def _run(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=WORKER_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle:
                        self._idle -= 1
                        self._workers -= 1
                        return
                continue
            if task is None:
                with self._lock:
                    self._workers -= 1
                return
            try:
                self._work(task)
            except Exception:  # a worker must outlive any bug, or the pool shrinks by one each time
                log.exception("internal error in a request thread")
            with self._lock:
                if self._stopping:
                    self._workers -= 1
                    return
                self._idle += 1
