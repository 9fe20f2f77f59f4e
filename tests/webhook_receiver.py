"""A real HTTP receiver for the outbound webhooks' tests: a threading ``http.server`` on a
free local port that answers each request with the next scripted reply (a status code, or
a delay before its status, to time out the sender) and keeps what it received."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    url: str
    replies: list[tuple[int, float]] = field(default_factory=list)  # (status, delay s)
    received: list[Received] = field(default_factory=list)
    default: tuple[int, float] = (200, 0.0)

    def script(self, *replies: int | tuple[int, float]) -> None:
        """The next replies: a status, or (status, seconds to wait before answering)."""
        self.replies[:] = [r if isinstance(r, tuple) else (r, 0.0) for r in replies]

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"received {len(self.received)} of {count}"
            time.sleep(0.05)
        return self.received


def start_receiver() -> tuple[Receiver, ThreadingHTTPServer]:
    lock = threading.Lock()
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            with lock:
                receiver.received.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                )
                status, delay = receiver.replies.pop(0) if receiver.replies else receiver.default
            if delay:
                time.sleep(delay)
            reply = f"reply {status}".encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the sender gave up (a timeout)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hooks")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver, server
