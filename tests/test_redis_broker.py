"""The Redis broker of ``project.redis_broker``: a message handed to a worker that died goes back."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings

pytestmark = pytest.mark.skipif(
    not settings.REDIS_URL, reason="needs REDIS_URL (runs in CI's PostgreSQL + Redis pass)"
)

DEAD = "a-worker-that-died"


@pytest.fixture
def broker() -> Iterator:
    from project.redis_broker import RedisBroker

    broker = RedisBroker(list_key=f"redis-broker-test-{uuid.uuid4().hex}")
    try:
        yield broker
    finally:
        broker.connection.delete(broker.list_key, broker.taken_key(), broker.taken_key(DEAD))


def test_a_message_handed_to_a_worker_that_died_goes_back_to_the_head_of_the_queue(broker) -> None:
    for payload in (b"first", b"second"):
        broker.enqueue(payload)
    # What BLMOVE does on the server for a worker killed while it waited: the message leaves the
    # queue for the worker's list, and the reply goes to a dead socket.
    broker.connection.lmove(broker.list_key, broker.taken_key(DEAD), "LEFT", "RIGHT")
    assert broker.queue_size() == 1

    assert broker.requeue_taken(DEAD) == 1
    assert broker.requeue_taken(DEAD) == 0  # its cluster may look twice: nothing more moves

    assert [broker.dequeue(), broker.dequeue()] == [[(None, b"first")], [(None, b"second")]]
    assert broker.queue_size() == 0


def test_a_message_a_worker_received_leaves_nothing_behind(broker) -> None:
    broker.enqueue(b"job")
    assert broker.taken_key().endswith(f":taken:{socket.gethostname()}:{os.getpid()}")  # unnamed

    assert broker.dequeue() == [(None, b"job")]

    assert broker.connection.exists(broker.taken_key()) == 0
    assert broker.requeue_taken(f"{socket.gethostname()}:{os.getpid()}") == 0
    assert broker.dequeue() is None  # after its one-second wait


def test_a_worker_named_by_its_cluster_takes_into_its_own_list(broker) -> None:
    broker.take_as("host:1:some-token")
    broker.enqueue(b"job")

    assert broker.taken_key() == f"{broker.list_key}:taken:host:1:some-token"
    assert broker.dequeue() == [(None, b"job")]
    assert broker.requeue_taken("host:1:some-token") == 0
