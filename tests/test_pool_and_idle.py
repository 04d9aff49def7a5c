"""The worker pool and the idle selector on their own, with real threads and real sockets.

Races that a daemon under load hits now and then, made to happen every time.
"""

from __future__ import annotations

import socket
import threading

from wire import wait_for

from dlrd import pool as pool_module
from dlrd.connection import ClientConnection
from dlrd.idle import IdleConnections
from dlrd.pool import WorkerPool


def test_a_task_submitted_after_the_threads_retired_is_run(monkeypatch):
    """Tasks queued at the limit made the idle count drift up: once the threads retired, a new task waited
    for a thread that did not exist (a connection left unanswered for minutes)."""
    monkeypatch.setattr(pool_module, "WORKER_IDLE_SECONDS", 0.2)
    ran: list[int] = []
    release = threading.Event()

    def work(task: int) -> None:
        if task < 2:
            release.wait(10)
        ran.append(task)

    pool = WorkerPool(work, limit=2)
    for task in range(5):  # two hold both threads; three queue at the limit
        pool.submit(task)
    release.set()
    wait_for(lambda: sorted(ran) == [0, 1, 2, 3, 4], 10, "every task to run")
    wait_for(lambda: pool.size == 0, 10, "the threads to retire")
    pool.submit(5)
    wait_for(lambda: 5 in ran, 5, "the task submitted after the quiet spell")
    pool.stop()


def test_a_connection_that_waited_twice_and_is_claimed_twice_is_closed_once():
    """A kept-alive connection woken by bytes that make no request waits again with the same deadline; two
    claims then closed it twice (it stood twice in the deadline heap), and the KeyError killed the idle
    thread, after which every new connection was refused."""
    closed: list[ClientConnection] = []
    ready: list[ClientConnection] = []
    idle = IdleConnections(on_ready=ready.append, on_closed=closed.append, housekeeping=lambda: None)
    idle.start()
    pairs = [socket.socketpair() for _ in range(2)]
    twice, later = (ClientConnection(ours, "127.0.0.1", "127.0.0.1", None, 10.0) for ours, _theirs in pairs)
    twice.served = later.served = 1
    deadline = twice.opened + 60
    try:
        idle.wait(twice, deadline)
        pairs[0][1].send(b"x")  # bytes that, say, decrypt to nothing: the worker finds no request ...
        wait_for(lambda: ready, 5, "the connection to be handed to a worker")
        pairs[0][0].recv(1)
        idle.wait(twice, deadline)  # ... and it waits again, with the same deadline
        idle.wait(later, deadline + 10)
        wait_for(lambda: len(idle) == 2, 5, "both to wait")
        assert idle.reclaim() and idle.reclaim()
        wait_for(lambda: len(closed) == 2, 5, "both claimed connections to be closed")
        assert idle.alive()
        assert sorted(map(id, closed)) == sorted(map(id, (twice, later))), "each closed once"
        assert not idle.reclaim(), "nothing kept alive is left to claim"
    finally:
        idle.stop()
        for _ours, theirs in pairs:
            theirs.close()
    assert not idle.alive()
