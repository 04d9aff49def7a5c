"""The bounded pool of request threads: started when work comes, up to a limit, retired when idle.

socketserver's ThreadingMixIn starts a thread per connection and never
says no. Here a thread is started only when there are more tasks waiting
than idle threads to take them, never more than the limit (dlrd sizes it
to max_connections, so a connection always finds one), and one that has
had nothing to do for WORKER_IDLE_SECONDS ends, so a burst's threads and
their stacks are given back. A thread never ends while a task waits.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("dlrd.server")

WORKER_IDLE_SECONDS = 5.0


class WorkerPool:
    """Runs `work(task)` for each submitted task in one of at most `limit` threads."""

    def __init__(self, work: Callable[[Any], None], limit: int, name: str = "dlrd-request",
                 on_refused: Callable[[Any], None] | None = None) -> None:
        self.limit = limit
        self._work = work
        self._name = name
        self._on_refused = on_refused  # a task no thread could be started for
        self._lock = threading.Lock()
        self._task_waiting = threading.Condition(self._lock)
        self._tasks: collections.deque[Any] = collections.deque()
        self._workers = 0
        self._idle = 0  # threads blocked waiting for a task
        self._started = 0
        self._stopping = False

    @property
    def size(self) -> int:
        """Threads alive now."""
        return self._workers

    def submit(self, task: Any) -> None:
        with self._lock:
            self._tasks.append(task)
            if self._idle >= len(self._tasks) or self._workers >= self.limit:
                self._task_waiting.notify()  # an idle thread takes it, or the next one to finish
                return
            self._workers += 1
            self._started += 1
            number = self._started
        try:
            threading.Thread(target=self._run, name=f"{self._name}-{number}", daemon=True).start()
        except RuntimeError as error:  # the system refused a thread: this task must not wait for ever
            log.error("cannot start a request thread (%s); closing the connection", error)
            with self._lock:
                self._workers -= 1
                refused = self._tasks.pop() if self._tasks and self._workers == 0 else None
            if refused is not None and self._on_refused is not None:
                self._on_refused(refused)

    def stop(self) -> None:
        """Let every thread finish its task and end (they are daemon threads: nothing waits for them)."""
        with self._lock:
            self._stopping = True
            self._task_waiting.notify_all()

    def _run(self) -> None:
        with self._lock:
            while True:
                while not self._tasks:
                    if self._stopping:
                        self._workers -= 1
                        return
                    self._idle += 1
                    woken = self._task_waiting.wait(WORKER_IDLE_SECONDS)
                    self._idle -= 1
                    if not woken and not self._tasks:
                        self._workers -= 1  # idle for WORKER_IDLE_SECONDS: give the thread back
                        return
                task = self._tasks.popleft()
                self._lock.release()
                try:
                    self._work(task)
                except Exception:  # a thread must outlive any bug, or the pool shrinks by one each time
                    log.exception("internal error in a request thread")
                finally:
                    self._lock.acquire()
