"""An async Django view using the saver, mounted only by the tests that need it."""

import json

from django.http import HttpRequest, JsonResponse
from django.urls import path

from checkpoints.saver import DjangoCheckpointSaver
from tests.checkpoints.graphs import chat_graph

graph = chat_graph(DjangoCheckpointSaver())


async def chat(request: HttpRequest, thread_id: str) -> JsonResponse:
    config = {"configurable": {"thread_id": thread_id}}
    await graph.ainvoke({"messages": [json.loads(request.body)["message"]]}, config)
    state = await graph.aget_state(config)
    history = [s async for s in graph.aget_state_history(config)]
    return JsonResponse({**state.values, "history": len(history)})


urlpatterns = [path("chat/<str:thread_id>", chat)]
