"""A webhook receiver for tests: a threaded HTTP server on 127.0.0.1 that records every POST."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    at: datetime
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Answers the n-th POST with ``answers[n]`` (the last one for every later POST); with
    ``hang``, answers nothing until closed (at most 30 s), like a receiver that stopped."""

    def __init__(
        self, answers: tuple[int, ...] = (200,), *, hang: bool = False, body: bytes = b""
    ) -> None:
        self.received: list[Received] = []
        self._answers = answers
        self._hang = hang
        self._body = body
        self._released = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(
                        Received(datetime.now(UTC), {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    index = len(receiver.received) - 1
                if receiver._hang:
                    receiver._released.wait(30)
                    return
                status = receiver._answers[min(index, len(receiver._answers) - 1)]
                reply = receiver._body or (b"thanks" if 200 <= status < 300 else b"not now")
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                try:
                    self.wfile.write(reply)
                except OSError:  # the sender read what it keeps and hung up
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.received)

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()
