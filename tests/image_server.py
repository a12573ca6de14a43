"""Local HTTP(S) image servers on 127.0.0.1 for tests (unit tests of fetching and the e2e image tests).

Routes: /img.png, /img.jpg, /rgba.png, /img.tiff, /redirect?to=URL[&code=302], /loop/N, /big, /big-stream,
/gzip-bomb, /gzip.png, /text, /bomb.png, /slow, /delay-ok, /delay-404, /status/N, and /files/<name> for files
registered in ``server.files`` (e.g. the shared flower photos).
"""
from __future__ import annotations

import gzip
import io
import ssl
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from PIL import Image


def _png(size=(20, 10), mode="RGB", color=(0, 128, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def _encode(fmt: str, size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, fmt)
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression-bomb probe)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


PNG = _png()
JPEG = _encode("JPEG")


class _Handler(BaseHTTPRequestHandler):
    """The routes of a :class:`_Server` (its ``httpd.owner``), recording each request there."""

    server: _HTTPServer

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", headers=None, length=True):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        server = self.server.owner
        with server._lock:
            server.hits.append(self.path)
            server.hosts.append(self.headers.get("Host", ""))
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        finally:
            with server._lock:
                server.in_flight -= 1

    def _route(self):
        u = urlparse(self.path)
        q = parse_qs(u.query)
        p = u.path
        files = self.server.owner.files
        if p == "/img.png":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif p == "/img.jpg":
            self._send(200, JPEG, {"Content-Type": "image/jpeg"})
        elif p == "/rgba.png":
            self._send(200, _png((8, 8), "RGBA", (255, 0, 0, 0)))
        elif p == "/img.tiff":
            self._send(200, _encode("TIFF"))
        elif p == "/redirect":
            self._send(int(q.get("code", ["302"])[0]), b"", {"Location": q["to"][0]})
        elif p.startswith("/loop/"):
            n = int(p.rsplit("/", 1)[1])
            self._send(302, b"", {"Location": f"/loop/{n + 1}"})
        elif p == "/big":  # declares more than any test limit, sends little
            self._send(200, b"\x00" * 10, {"Content-Length": str(100 * 1024 * 1024)}, length=False)
        elif p == "/big-stream":  # no Content-Length: close-delimited body of 200 KB
            self._send(200, b"", length=False)
            for _ in range(50):
                self.wfile.write(b"\x00" * 4096)
        elif p == "/gzip-bomb":
            body = gzip.compress(b"\x00" * (4 * 1024 * 1024))
            self._send(200, body, {"Content-Encoding": "gzip"})
        elif p == "/gzip.png":
            self._send(200, gzip.compress(PNG), {"Content-Encoding": "gzip"})
        elif p == "/text":
            self._send(200, b"<html>this is not an image</html>", {"Content-Type": "text/html"})
        elif p == "/bomb.png":
            self._send(200, _png_declaring(30000, 30000))
        elif p == "/slow":  # trickles a body: every read is quick, the whole is slow
            self._send(200, b"", {"Content-Length": "1000"}, length=False)
            for _ in range(40):
                self.wfile.write(b"\x00")
                self.wfile.flush()
                time.sleep(0.05)
        elif p == "/delay-ok":
            time.sleep(float(q.get("s", ["0.15"])[0]))
            self._send(200, PNG)
        elif p == "/delay-404":
            time.sleep(0.3)
            self._send(404, b"gone")
        elif p.startswith("/files/") and p[len("/files/") :] in files:
            self._send(200, files[p[len("/files/") :]])
        elif p.startswith("/status/"):
            self._send(int(p.rsplit("/", 1)[1]), b"nope")
        else:
            self._send(404, b"unknown route")


class _HTTPServer(ThreadingHTTPServer):
    owner: _Server


class _Server:
    """A threaded HTTP(S) server on 127.0.0.1 with the routes the tests need; records what it saw."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.hits: list[str] = []
        self.files: dict[str, bytes] = {}
        self.hosts: list[str] = []
        self.sni: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.httpd.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
