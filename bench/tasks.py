"""The raw django-q2 baseline task of `make bench`.

With ``save_limit=-1`` django-q2 records nothing about a successful task, so the baseline needs a
completion signal of its own. It must cost next to nothing, or the baseline would be slowed down
and flatter our ratio: one datagram on a Unix socket (a few microseconds, no database, no broker
round trip, identical on every broker). Unix datagram sockets do not drop messages: a full
receiver queue blocks the sender instead.
"""

from __future__ import annotations

import socket
import time

# One socket per worker process, like a reused broker connection: no setup cost per task.
_sock: socket.socket | None = None


def noop_signal(address: str, index: int) -> None:
    """Do nothing, then tell the bench (listening on ``address``) that task ``index`` ran and when."""
    global _sock
    if _sock is None:
        _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    _sock.sendto(f"{index} {time.time()!r}".encode(), address)
