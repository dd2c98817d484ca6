"""``runs.jsonable.to_json``: orjson's round trip gives what the Python walk gives, for every kind
of value a graph's state holds, and what orjson refuses is walked."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import uuid
from collections import OrderedDict, namedtuple

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.types import Interrupt

from project.realtime.sse import encode_data
from runs.jsonable import _walk, to_json, to_json_encoded


class Colour(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Level(str, enum.Enum):  # noqa: UP042  a str mixin (not StrEnum) is the case here
    HIGH = "high"


@dataclasses.dataclass
class Point:
    x: int
    when: datetime.date


Pair = namedtuple("Pair", "left right")


class Text(str):
    pass


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


VALUES = [
    {"messages": [{"role": "user", "content": "héllo \u2603"}, {"role": "assistant", "content": "x"}]},
    [1, 2.5, True, None, "s", [], {}],
    (1, (2, 3)),
    {"set": {1}, "frozen": frozenset(["a"])},
    OrderedDict(b=1, a=2),
    {"when": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC), "day": datetime.date(2024, 5, 1)},
    {"time": datetime.time(12, 30)},
    {"id": uuid.UUID("12345678-1234-5678-1234-567812345678")},
    {"colour": Colour.RED, "pair": Colour.PAIR, "level": Level.HIGH},
    {"point": Point(1, datetime.date(2024, 1, 2))},
    {"pair": Pair(1, Pair("a", None))},
    {"text": Text("sub"), Text("key"): 1},
    {"bytes": b"ab\xff"},
    {"opaque": Opaque()},
    {"interrupt": Interrupt(value={"question": "ok?"}, id="i-1")},
    {"messages": [HumanMessage("hi", id="m1"), AIMessage("there", id="m2")]},
    {"deep": [[[[{"a": [1, {"b": (2,)}]}]]]]},
    "plain",
    7,
    None,
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_the_orjson_round_trip_gives_what_the_walk_gives(value):
    assert to_json(value) == _walk(value)


@pytest.mark.parametrize("value", [*VALUES, {1: "one", None: [2**60]}, {"x": math.nan}], ids=range(len(VALUES) + 2))
def test_encoded_it_is_the_bytes_of_an_event_of_it(value):
    assert to_json_encoded(value) == encode_data(to_json(value))


def test_shapes():
    assert to_json({"i": Interrupt(value=1, id="x")}) == {"i": {"value": 1, "id": "x", "response_schema": None}}
    assert to_json({"p": Pair(1, 2), "s": {3}}) == {"p": [1, 2], "s": [3]}
    assert to_json({"c": Colour.PAIR}) == {"c": [1, 2]}
    assert to_json({"o": Opaque(), "b": b"ab"}) == {"o": "opaque!", "b": "ab"}
    assert to_json({"d": datetime.date(2024, 5, 1)}) == {"d": "2024-05-01"}
    assert to_json([HumanMessage("hi", id="m1")])[0]["content"] == "hi"


def test_what_orjson_refuses_is_walked():
    assert to_json({1: "one", None: [2**70]}) == {"1": "one", "None": [2**70]}
    nested: list = []
    inner = nested
    for _ in range(400):  # deeper than orjson goes
        inner.append([])
        inner = inner[0]
    assert to_json(nested) == nested


def test_the_result_is_a_copy():
    state = {"messages": [{"content": "a"}]}
    copied = to_json(state)
    state["messages"][0]["content"] = "changed"
    assert copied == {"messages": [{"content": "a"}]}


def test_nan_and_infinities_become_null_as_in_the_events():
    assert to_json({"x": math.nan, "y": [math.inf, -math.inf], "z": 1.5}) == {"x": None, "y": [None, None], "z": 1.5}
    assert to_json({1: math.nan}) == {"1": None}  # the walk too
