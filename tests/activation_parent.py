"""Plays systemd's part in socket activation for the tests: bind, then hand the sockets to `dlrd serve`.

    python activation_parent.py NAME=HOST:PORT [NAME=HOST:PORT ...] -- COMMAND...

It binds and listens on each address (port 0: any free one), prints one
JSON line {"addresses": {name: [host, port]}}, then starts COMMAND the way
systemd does: forked, the sockets moved to fds 3 onward in the order
given, LISTEN_FDS and LISTEN_FDNAMES set, and LISTEN_PID set to the
child's own pid (after the fork, before exec). When the child exits it
prints {"exited": code, "pid": pid}; a line "start" on stdin starts
COMMAND again on the same sockets (systemd restarting the service while
the sockets, and the connections waiting in their backlog, live on);
EOF on stdin ends it. {"started": pid} is printed for each start.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading


def bind(spec: str) -> tuple[str, socket.socket]:
    name, _, address = spec.partition("=")
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    return name, sock


def start(sockets: list[tuple[str, socket.socket]], command: list[str]) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: as systemd's service manager does between fork and exec
        fds = [os.dup(sock.fileno()) for _name, sock in sockets]  # out of the way of 3, 4 ... first
        for index, fd in enumerate(fds):
            os.dup2(fd, 3 + index, inheritable=True)
        for fd in range(3 + len(fds), 1024):
            try:
                os.close(fd)
            except OSError:
                pass
        env = dict(os.environ, LISTEN_FDS=str(len(sockets)), LISTEN_PID=str(os.getpid()),
                   LISTEN_FDNAMES=":".join(name for name, _sock in sockets))
        os.execvpe(command[0], command, env)
    finally:
        os._exit(127)


def main() -> None:
    split = sys.argv.index("--")
    sockets = [bind(spec) for spec in sys.argv[1:split]]
    command = sys.argv[split + 1:]
    say({"addresses": {name: list(sock.getsockname()[:2]) for name, sock in sockets}})
    children: list[int] = []
    lock = threading.Lock()

    def launch() -> None:
        pid = start(sockets, command)
        with lock:
            children.append(pid)
        say({"started": pid})
        threading.Thread(target=reap, args=(pid,), daemon=True).start()

    def reap(pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        say({"exited": os.waitstatus_to_exitcode(status), "pid": pid})

    launch()
    for line in sys.stdin:
        if line.strip() == "start":
            launch()


def say(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
