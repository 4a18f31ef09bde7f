"""The fake provider's HTTP layer: keep-alive connections, replies, cuts, hangs and resets.

Sockets only; what to answer is decided by the ``serve`` callback
(``FakeProvider._serve``). Stopping the server aborts every open connection,
hanging ones included, and joins their threads.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llm_governor.testing import wire


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler; all logic lives in :meth:`FakeProvider._serve`."""

    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes; without NODELAY, Nagle plus
        # delayed ACKs would add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read the ledger, not stderr."""

    def do_POST(self) -> None:
        self.server.serve(self)

    def do_GET(self) -> None:
        self.server.serve(self)

    def read_body(self) -> bytes:
        """The request body, from Content-Length or chunked transfer encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_reply(
        self,
        reply: wire.Reply,
        headers: Sequence[tuple[str, str]],
        overrides: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Send JSON with Content-Length, or SSE frames chunked, so keep-alive stays usable."""
        self._send_head(reply, headers, overrides)
        if reply.events is None:
            self.wfile.write(reply.body)
            return
        for frame in reply.events:
            self.wfile.write(b"%X\r\n%s\r\n" % (len(frame), frame))
        self.wfile.write(b"0\r\n\r\n")

    def send_cut(
        self,
        reply: wire.Reply,
        headers: Sequence[tuple[str, str]],
        overrides: Sequence[tuple[str, str]],
        frames: int,
    ) -> None:
        """Status line, headers and the first ``frames`` SSE frames (or half the body), then RST."""
        self._send_head(reply, headers, overrides)
        if reply.events is None:
            self.wfile.write(reply.body[: len(reply.body) // 2])
        else:
            for frame in reply.events[: max(0, frames)]:
                self.wfile.write(b"%X\r\n%s\r\n" % (len(frame), frame))
        self.reset_connection()

    def _send_head(
        self,
        reply: wire.Reply,
        headers: Sequence[tuple[str, str]],
        overrides: Sequence[tuple[str, str]],
    ) -> None:
        replaced = {name.lower() for name, _ in overrides}
        base = [("Content-Type", reply.content_type), *reply.headers, *headers]
        self.send_response(reply.status)
        for name, value in (*(h for h in base if h[0].lower() not in replaced), *overrides):
            self.send_header(name, value)
        if reply.events is None:
            self.send_header("Content-Length", str(len(reply.body)))
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def wait_for_disconnect(self, stopping: threading.Event) -> None:
        """Send nothing until the client closes its end or the server is stopping."""
        sock = self.connection
        while not stopping.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable and not sock.recv(1, socket.MSG_PEEK):
                    return  # orderly close (EOF), or stop() shut the socket down
            except (OSError, ValueError):
                return  # reset by the client, or already closed
            if readable:
                stopping.wait(0.05)  # the client sent more bytes: keep hanging, don't spin

    def reset_connection(self) -> None:
        """Abort the connection with a TCP RST (after what was already written)."""
        self.close_connection = True
        _drain(self.connection)
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()
        except OSError:
            pass


def _drain(sock: socket.socket, timeout: float = 1.0) -> None:
    """Wait until the kernel has sent everything written: SO_LINGER 0 drops unsent bytes.

    Uses Linux's SIOCOUTQ (== TIOCOUTQ); elsewhere it just waits a moment.
    """
    try:
        import fcntl
        import termios

        request: int = termios.TIOCOUTQ
    except (ImportError, AttributeError):
        time.sleep(0.02)
        return
    deadline = time.monotonic() + timeout
    buf = bytearray(struct.pack("i", 0))
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), request, buf)
        except (OSError, ValueError):
            return
        if struct.unpack("i", buf)[0] == 0:
            return
        time.sleep(0.002)


class Server(ThreadingHTTPServer):
    """Tracks connection threads so stop() can close keep-alive sockets and join them."""

    daemon_threads = True
    block_on_close = False
    # socketserver listens with a backlog of 5: a burst of concurrent clients would see
    # their SYNs dropped and time out connecting (a provider never does that)
    request_queue_size = 128

    def __init__(self, serve: Callable[[Handler], None]) -> None:
        self.serve = serve
        self._conns_lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        super().__init__(("127.0.0.1", 0), Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._run, args=(request, client_address), name="fake-provider-conn", daemon=True
        )
        with self._conns_lock:
            self._conns[request] = thread
        thread.start()

    def _run(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass
        finally:
            self.shutdown_request(request)
            with self._conns_lock:
                self._conns.pop(request, None)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection down and wait for its thread."""
        with self._conns_lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connection errors are expected (resets, timeouts); don't print tracebacks."""
