"""What the client's tests share: a real HTTP server on 127.0.0.1 that answers from a script.

The client's own tests run with nothing but the client installed (``./scripts/test`` runs them in a fresh virtual
environment without Ray, torch or numpy), so this file imports only the standard library and pytest; the tests
against the real service (``tests/serve_app/test_python_client.py``) use the suite's fixtures instead.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class ScriptedServer:
    """Answers each request with the next :class:`Answer` of ``script`` (the last one again once they run out) and
    records every request it received (``seen``)."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.seen: list[Seen] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                server.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                        json.loads(raw) if raw else None))
                answer = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                payload = b"" if answer.body is None else (
                    answer.body.encode() if isinstance(answer.body, str) else json.dumps(answer.body).encode())
                self.send_response(answer.status)
                content_type = "text/html" if isinstance(answer.body, str) else "application/json"
                for k, v in {"Content-Type": content_type, **answer.headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, *answers: tuple) -> None:
        """Script the next answers, each ``(status, body[, headers])``: a str body is sent as HTML, others as JSON."""
        self.script, self.seen = [Answer(*a) for a in answers], []


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    thread = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
