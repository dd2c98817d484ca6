"""django-q2's Redis broker, whose messages a worker killed while it waits for one are not lost.

django-q2's broker takes a message with ``BLPOP``. When the process blocked in it is killed, Redis
may hand the next message to it before it notices the connection is gone (the process is still
being torn down): the message is written to a dead socket and lost. With django-q2's single
pusher that was rare; with a cluster whose every worker reads the queue (``executions.cluster``),
an idle worker killed just as a job is created lost it (2 of 10 such kills), and only the
recovery sweep brought the job back, ``EXECUTIONS_REQUEUE_AFTER`` later.

Here a worker takes a message with ``BLMOVE`` into a list of its own (``<queue>:taken:<name>``), in
one step on the server, and empties that list once the message is in its hands. A message
handed to a worker that died is still in its list, which its cluster moves back to the head of
the queue (``requeue_taken``) when it sees the worker exit. Needs Redis 6.2 or later.
"""

from __future__ import annotations

import os
import socket

from django_q.brokers.redis_broker import Redis

# Seconds a worker's read of the queue blocks before it looks around (stop flag, its sentinel).
READ_TIMEOUT = 1


class RedisBroker(Redis):
    """Q_CLUSTER ``broker_class`` with Redis; same queue and messages as django-q2's."""

    taker: str | None = None  # see take_as

    def take_as(self, taker: str) -> None:
        """Name the list this process takes messages into. Its cluster chooses a name no other
        process uses (hostnames and pids repeat across containers) and, once the process died,
        puts back what is left in the list. Unnamed, it is ``<host>:<pid>``."""
        self.taker = taker

    def taken_key(self, taker: str | None = None) -> str:
        """The list holding the message ``taker`` (this process by default) is being handed."""
        return f"{self.list_key}:taken:{taker or self.taker or f'{socket.gethostname()}:{os.getpid()}'}"

    def dequeue(self) -> list[tuple[None, bytes]] | None:
        taken = self.taken_key()
        payload = self.connection.blmove(self.list_key, taken, READ_TIMEOUT, "LEFT", "RIGHT")
        if payload is None:
            return None
        # In hands now: from here the row's claim and the recovery sweep look after the job.
        self.connection.delete(taken)
        return [(None, payload)]

    def requeue_taken(self, taker: str) -> int:
        """Put back at the head of the queue whatever the dead process ``taker`` was handed and
        never received; how many messages that was."""
        taken, moved = self.taken_key(taker), 0
        while self.connection.lmove(taken, self.list_key, "RIGHT", "LEFT") is not None:
            moved += 1
        return moved
