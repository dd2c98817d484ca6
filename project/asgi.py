import os

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


class SyncChainASGIHandler(ASGIHandler):
    """Django's ASGI handler, with the middleware chain and a sync view run in one trip to the
    request's thread instead of three.

    Our middleware is all sync (``settings.MIDDLEWARE`` says why), and so are DRF's views. Built
    in async mode, Django wraps the sync chain for the loop, and the chain's innermost handler,
    being async, hops back to the loop, which then sends the view to the thread again: three
    round trips between the loop and the thread, each about a tenth of a millisecond of CPU, for
    every request. Built in sync mode (as under WSGI) and wrapped once, it is one: the same
    middleware, the same thread per request, the same view handling; an async view (a stream)
    is run on the loop by Django's sync handler, through ``async_to_sync``.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        if is_async:
            self._middleware_chain = sync_to_async(self._middleware_chain, thread_sensitive=True)


django.setup(set_prefix=False)
application = SyncChainASGIHandler()
