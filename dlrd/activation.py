"""systemd socket activation: the listening sockets systemd bound and handed over (sd_listen_fds(3)).

systemd passes them as fds 3 onward, with LISTEN_FDS (how many),
LISTEN_PID (for whom: a variable inherited by a program dlrd did not mean
it for is ignored) and LISTEN_FDNAMES (FileDescriptorName= in the socket
unit; a name starting with "https" or "tls" marks a socket that speaks
TLS). With them dlrd binds nothing itself, so the service needs no
capability and no address family but AF_UNIX: the sockets were made
outside its sandbox, and connections that arrive while it restarts wait in
their backlog instead of being refused.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from dlrd.errors import StartupError

FIRST_FD = 3  # SD_LISTEN_FDS_START
TLS_NAME_PREFIXES = ("https", "tls")


@dataclass(frozen=True)
class InheritedSocket:
    """One listening socket from systemd, and whether its FileDescriptorName says TLS."""

    sock: socket.socket
    name: str
    tls: bool


def socket_activated(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """True when systemd handed this process listening sockets (the variables name this very process)."""
    env = os.environ if environ is None else environ
    return env.get("LISTEN_PID", "") == str(os.getpid()) and env.get("LISTEN_FDS", "").isdigit() \
        and int(env["LISTEN_FDS"]) > 0


def inherited_sockets() -> list[InheritedSocket]:
    """The sockets systemd handed over, checked; empty when not socket-activated.

    The variables stay set (sd_listen_fds(0)): dlrd starts no program that
    could mistake them for its own, and SIGHUP's re-read of the config
    asks socket_activated() again.
    """
    env = os.environ
    if not socket_activated(env):
        return []
    count = int(env["LISTEN_FDS"])
    names = env["LISTEN_FDNAMES"].split(":") if env.get("LISTEN_FDNAMES") else []
    sockets = []
    for index, fd in enumerate(range(FIRST_FD, FIRST_FD + count)):
        name = names[index] if index < len(names) else "unknown"
        sockets.append(InheritedSocket(_adopt(fd, name), name, name.lower().startswith(TLS_NAME_PREFIXES)))
    return sockets


def _adopt(fd: int, name: str) -> socket.socket:
    """fd as a listening TCP socket that children do not inherit; StartupError for anything else."""
    where = f"socket activation: fd {fd} (FileDescriptorName={name})"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise StartupError(f"{where} is not a socket: {error.strerror or error}; check the socket unit's "
                           "Listen lines") from None
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        raise StartupError(f"{where} is not a TCP socket; dlrd serves ListenStream=[address:]port only")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise StartupError(f"{where} is not listening; use ListenStream= with Accept=no in the socket unit")
    sock.set_inheritable(False)
    sock.setblocking(True)  # NonBlocking=yes in the unit would make accept() fail with EAGAIN
    return sock
