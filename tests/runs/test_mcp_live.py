"""/mcp/ with the official ``mcp`` client library (Streamable HTTP) against a live server and
cluster: every assistant is a tool, and calling one runs it."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

pytestmark = pytest.mark.live


async def _session_call(live, api_key: str, work):
    async with (
        httpx.AsyncClient(headers={"x-api-key": api_key}, timeout=60) as http,
        streamable_http_client(f"{live.url}/mcp/", http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await work(session)


def test_tools_list_and_call_with_the_mcp_client(live) -> None:
    mine = httpx.post(
        f"{live.url}/assistants",
        json={"graph_id": "echo", "name": "echo", "description": "my own echo"},
        headers={"x-api-key": live.api_key},
    ).json()

    async def work(session: ClientSession):
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        echo = await session.call_tool("echo", {"messages": [{"role": "user", "content": "hi mcp"}]})
        failing = await session.call_tool("echo", {"messages": [{"role": "user", "content": "fail"}]})
        with pytest.raises(McpError, match="Unknown tool"):
            await session.call_tool("no-such-tool", {})
        return tools, echo, failing

    tools, echo, failing = asyncio.run(_session_call(live, live.api_key, work))
    # The system assistants by their graph names, and the user's own echo after them.
    assert {"echo", "hitl", "steps", "chat", "nested"} <= set(tools)
    own = f"echo-{mine['assistant_id'][:8]}"
    assert tools[own].description == "my own echo"
    assert "messages" in tools["echo"].inputSchema["properties"]
    assert tools["echo"].inputSchema["type"] == "object"

    assert not echo.isError
    assert echo.structuredContent["messages"][-1]["content"] == "echo: hi mcp"
    assert json.loads(echo.content[0].text) == echo.structuredContent
    assert failing.isError
    assert json.loads(failing.content[0].text)["__error__"]["message"] == "boom requested"

    # Another user sees the system assistants only.
    async def other_work(session: ClientSession):
        return {tool.name for tool in (await session.list_tools()).tools}

    assert own not in asyncio.run(_session_call(live, live.other_api_key, other_work))


def test_the_endpoint_over_plain_http(live) -> None:
    url = f"{live.url}/mcp/"
    both = {"x-api-key": live.api_key, "Accept": "application/json, text/event-stream"}
    ping = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=both)
    assert ping.status_code == 200 and ping.json() == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert "mcp-session-id" not in ping.headers
    notified = httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=both)
    assert notified.status_code == 202 and notified.content == b""
    unknown = httpx.post(url, json={"jsonrpc": "2.0", "id": "a", "method": "resources/list"}, headers=both)
    assert unknown.json()["error"]["code"] == -32601
    old = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {"protocolVersion": "1999-01-01"}},
        headers=both,
    ).json()
    assert old["result"]["protocolVersion"] == "2025-11-25"

    assert httpx.post(url, content=b"{nope", headers=both).json()["error"]["code"] == -32700
    assert httpx.post(url, json=[1], headers=both).status_code == 400
    json_only = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={"x-api-key": live.api_key, "Accept": "application/json"},
    )
    assert json_only.status_code == 400
    assert httpx.get(url, headers=both).status_code == 405
    assert httpx.delete(url, headers=both).status_code == 404
    assert httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}).status_code == 401
