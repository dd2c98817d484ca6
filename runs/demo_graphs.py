"""Graphs that ship with the platform and are registered by default: echo, hitl, steps, chat,
nested."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Iterator
from itertools import pairwise
from typing import Annotated, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt
from typing_extensions import TypedDict


class EchoState(TypedDict, total=False):
    messages: Annotated[list, operator.add]
    sleep: float


def _content(message: Any) -> str:
    if isinstance(message, dict):
        return str(message.get("content", ""))
    return str(getattr(message, "content", message))


def _last_content(state: EchoState) -> str:
    messages = state.get("messages") or []
    return _content(messages[-1]) if messages else ""


# Async like the nodes: under astream a sync function is sent to a thread of the loop's executor,
# a visible share of a run as short as echo's. (Thread state updates use aupdate_state.)
async def _route(state: EchoState) -> str:
    return "fail" if _last_content(state) == "fail" else "echo"


async def _echo(state: EchoState) -> dict:
    if state.get("sleep"):
        await asyncio.sleep(float(state["sleep"]))
    return {"messages": [{"role": "assistant", "content": "echo: " + _last_content(state)}]}


async def _fail(state: EchoState) -> dict:  # async: no trip to the executor
    raise ValueError("boom requested")


_echo_builder = StateGraph(EchoState)
_echo_builder.add_node("echo", _echo)
_echo_builder.add_node("fail", _fail)
_echo_builder.add_conditional_edges(START, _route, ["echo", "fail"])
_echo_builder.add_edge("echo", END)
_echo_builder.add_edge("fail", END)
echo = _echo_builder.compile()


class HitlState(TypedDict, total=False):
    messages: Annotated[list, operator.add]
    approved: Any


def _ask(state: HitlState) -> dict:
    answer = interrupt({"question": "approve?"})
    return {"approved": answer}


_hitl_builder = StateGraph(HitlState)
_hitl_builder.add_node("ask", _ask)
_hitl_builder.add_edge(START, "ask")
_hitl_builder.add_edge("ask", END)
hitl = _hitl_builder.compile()


class StepsState(TypedDict, total=False):
    topic: str
    delay: float
    log: Annotated[list, operator.add]


STEP_NAMES = ("plan", "research", "draft", "review")


def _step(index: int, name: str):
    async def node(state: StepsState) -> dict:
        write = get_stream_writer()
        write({"step": index, "total": len(STEP_NAMES), "name": name, "status": "started"})
        if state.get("delay"):
            await asyncio.sleep(float(state["delay"]))
        write({"step": index, "total": len(STEP_NAMES), "name": name, "status": "done"})
        return {"log": [f"{name}: {state.get('topic', '')}".rstrip(": ")]}

    node.__name__ = name
    return node


_steps_builder = StateGraph(StepsState)
for _index, _name in enumerate(STEP_NAMES, start=1):
    _steps_builder.add_node(_name, _step(_index, _name))
_steps_builder.add_edge(START, STEP_NAMES[0])
for _previous, _next in pairwise(STEP_NAMES):
    _steps_builder.add_edge(_previous, _next)
_steps_builder.add_edge(STEP_NAMES[-1], END)
steps = _steps_builder.compile()


class EchoChatModel(BaseChatModel):
    """A chat model with no LLM behind it: it answers "echo: <last message>", word by word when
    streamed, so the ``messages`` stream modes can be tried without an API key."""

    @property
    def _llm_type(self) -> str:
        return "echo-chat"

    @staticmethod
    def _reply(messages: list[BaseMessage]) -> str:
        return "echo: " + (_content(messages[-1]) if messages else "")

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._reply(messages)))])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for index, word in enumerate(self._reply(messages).split(" ")):
            yield ChatGenerationChunk(message=AIMessageChunk(content=(" " if index else "") + word))


class ChatState(TypedDict, total=False):
    messages: Annotated[list, add_messages]


_chat_model = EchoChatModel()


async def _chat(state: ChatState) -> dict:
    return {"messages": [await _chat_model.ainvoke(state.get("messages") or [])]}


_chat_builder = StateGraph(ChatState)
_chat_builder.add_node("chat", _chat)
_chat_builder.add_edge(START, "chat")
_chat_builder.add_edge("chat", END)
chat = _chat_builder.compile()


async def _inner(state: StepsState) -> dict:
    get_stream_writer()({"inner": state.get("topic", "")})
    return {"log": [f"inner: {state.get('topic', '')}"]}


def _outer(state: StepsState) -> dict:
    return {"log": [f"outer: {state.get('topic', '')}"]}


_inner_builder = StateGraph(StepsState)
_inner_builder.add_node("inner", _inner)
_inner_builder.add_edge(START, "inner")
_inner_builder.add_edge("inner", END)

_nested_builder = StateGraph(StepsState)
_nested_builder.add_node("outer", _outer)
# A compiled graph as a node: its events come with the namespace "child:<task id>".
_nested_builder.add_node("child", _inner_builder.compile())
_nested_builder.add_edge(START, "outer")
_nested_builder.add_edge("outer", "child")
_nested_builder.add_edge("child", END)
nested = _nested_builder.compile()
