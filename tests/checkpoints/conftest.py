"""Fixtures for the checkpoint saver tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from checkpoints.saver import DjangoCheckpointSaver


def close_connections_of_async_calls() -> None:
    """Close the connection of asgiref's shared thread, where a bare ``asyncio.run`` sends the
    saver's async calls: PostgreSQL cannot drop a test database another connection holds."""
    asyncio.run(sync_to_async(connections.close_all, thread_sensitive=True)())


@pytest.fixture
def saver(transactional_db) -> Iterator[DjangoCheckpointSaver]:
    # Committed data (transactional_db): async calls and LangGraph's sync background threads
    # read and write through other connections than the test's.
    yield DjangoCheckpointSaver()
    close_connections_of_async_calls()


@pytest.fixture
def connection_vendor() -> str:
    return connections["default"].vendor
