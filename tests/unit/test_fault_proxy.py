"""The fault proxy against real upstreams on loopback: an HTTP server and a TCP echo server."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from fault_proxy import FaultProxy, Mode, parse_command

BIG = os.urandom(5 * 1024 * 1024)
SMALL = b"hello from upstream\n"
TICK_SECONDS = 0.02


class NonLoopbackConnectionError(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overrides the unit suite's guard: these tests need real sockets, but on loopback only."""

    def loopback_only(self: socket.socket, address: Any) -> None:
        if self.family == socket.AF_UNIX or ipaddress.ip_address(address[0]).is_loopback:
            return original(self, address)
        raise NonLoopbackConnectionError(f"fault proxy test tried to connect to {address!r}")

    original = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", loopback_only)


class Upstream(http.server.ThreadingHTTPServer):
    """Records every connection and request, so a test can tell the proxy never reached it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.connections = 0
        self.paths: list[str] = []
        self.ticks = 0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.lock:
            self.connections += 1
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the proxy cuts connections on purpose
            super().handle_error(request, client_address)

    def seen(self) -> tuple[int, int]:
        with self.lock:
            return self.connections, len(self.paths)


class _Handler(http.server.BaseHTTPRequestHandler):
    def _upstream(self) -> Upstream:
        return cast(Upstream, self.server)

    def do_GET(self) -> None:
        upstream = self._upstream()
        with upstream.lock:
            upstream.paths.append(self.path)
        if self.path == "/stream":
            self._stream(upstream)
            return
        body = BIG if self.path == "/big" else SMALL
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        upstream = self._upstream()
        with upstream.lock:
            upstream.paths.append(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _stream(self, upstream: Upstream) -> None:
        """A watch-like answer: a line every TICK_SECONDS for up to 5 s, or until the proxy hangs up."""
        self.send_response(200)
        self.end_headers()
        with contextlib.suppress(OSError):
            for n in range(int(5 / TICK_SECONDS)):
                self.wfile.write(f"tick {n}\n".encode())
                with upstream.lock:
                    upstream.ticks += 1
                time.sleep(TICK_SECONDS)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EchoServer:
    """Plain TCP: sends back what it receives; closes once the client half-closes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.listener.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", upstream.server_address[1]) as running:
        yield running
        counters = running.counters()
        assert counters.accepted == sum(counters.by_mode.values())


@pytest.fixture
def echo_proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port) as running:
        yield running


@contextlib.contextmanager
def request(
    proxy: FaultProxy, method: str, path: str, body: bytes | None = None, timeout: float = 2.0
) -> Iterator[http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        yield conn.getresponse()
    finally:
        conn.close()


def get(proxy: FaultProxy, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with request(proxy, "GET", path, timeout=timeout) as response:
        return response.status, response.read()


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def read_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def roundtrip_seconds(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(payload)
    assert sock.recv(65536) == payload
    return time.monotonic() - started


def test_pass_forwards_a_5mb_body_both_ways_intact(proxy: FaultProxy) -> None:
    status, body = get(proxy, "/big")
    with request(proxy, "POST", "/upload", body=BIG) as response:
        posted = response.read()

    assert status == 200
    # Digests, not the bytes: a 5 MB assertion diff would bury the failure.
    assert (len(body), hashlib.sha256(body).hexdigest()) == (len(BIG), hashlib.sha256(BIG).hexdigest())
    assert posted == f"{len(BIG)} {hashlib.sha256(BIG).hexdigest()}".encode()
    counters = proxy.counters()
    assert (counters.accepted, counters.by_mode[Mode.PASS], counters.upstream_connections) == (2, 2, 2)


def test_pass_echoes_and_passes_a_half_close_on(echo_proxy: FaultProxy) -> None:
    payload = os.urandom(300_000)
    with connect(echo_proxy) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert read_until_eof(sock) == payload


def test_blackhole_times_out_a_new_client_and_never_reaches_upstream(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    before = upstream.seen()
    proxy.set_mode("blackhole")

    with pytest.raises(TimeoutError):
        get(proxy, "/small", timeout=0.3)
    with connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"GET /small HTTP/1.0\r\n\r\n")
        with pytest.raises(TimeoutError):  # an EOF here would be a close, which a blackhole never does
            sock.recv(1)

    assert upstream.seen() == before
    counters = proxy.counters()
    assert (counters.by_mode[Mode.BLACKHOLE], counters.upstream_connections) == (2, 0)


def test_blackhole_stalls_an_open_stream_for_good(proxy: FaultProxy, upstream: Upstream) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
        received = b""
        while received.count(b"tick") < 3:
            chunk = sock.recv(65536)
            assert chunk, "the stream ended before the fault"
            received += chunk

        proxy.set_mode("blackhole")
        time.sleep(0.05)  # set_mode returns once the proxy stopped writing; loopback may still be delivering
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # take what was already on its way
            while sock.recv(65536):
                pass
        ticks_before = upstream.ticks
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(65536)
        assert upstream.ticks >= ticks_before + 3, "upstream kept sending, so the silence is the proxy's"

        proxy.set_mode("pass")
        assert get(proxy, "/small") == (200, SMALL)
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(65536)
    assert proxy.counters().stalled_existing == 1


def test_reset_resets_a_new_connection_and_never_reaches_upstream(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    before = upstream.seen()
    proxy.set_mode("reset")

    # The RST may beat connect() back to the client, or come at the first read; a plain close would read b"".
    with pytest.raises(ConnectionResetError), connect(proxy) as sock:
        sock.recv(1)

    assert upstream.seen() == before
    counters = proxy.counters()
    assert (counters.by_mode[Mode.RESET], counters.upstream_connections) == (1, 0)


def test_reset_resets_open_connections(echo_proxy: FaultProxy) -> None:
    with connect(echo_proxy) as sock:
        roundtrip_seconds(sock)
        echo_proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    assert echo_proxy.counters().reset_existing == 1


def test_delay_holds_an_answer_for_at_least_the_delay(proxy: FaultProxy) -> None:
    proxy.set_mode("delay", seconds=0.3)

    started = time.monotonic()
    answer = get(proxy, "/small")

    assert time.monotonic() - started >= 0.3
    assert answer == (200, SMALL)
    assert proxy.counters().by_mode[Mode.DELAY] == 1


def test_delay_applies_to_an_open_connection_while_it_lasts(echo_proxy: FaultProxy) -> None:
    with connect(echo_proxy) as sock:
        assert roundtrip_seconds(sock) < 0.25
        echo_proxy.set_mode("delay", seconds=0.3)
        assert roundtrip_seconds(sock) >= 0.3
        echo_proxy.set_mode("pass")
        assert roundtrip_seconds(sock) < 0.25


def test_http_status_answers_without_contacting_upstream(proxy: FaultProxy, upstream: Upstream) -> None:
    before = upstream.seen()
    proxy.set_mode("http_status", status=503)

    with request(proxy, "GET", "/small") as response:
        status, connection, body = response.status, response.getheader("Connection"), response.read()

    assert (status, connection) == (503, "close")
    assert b"503" in body
    assert upstream.seen() == before
    counters = proxy.counters()
    assert (counters.by_mode[Mode.HTTP_STATUS], counters.upstream_connections) == (1, 0)


def test_http_status_reads_a_large_request_body_before_closing(proxy: FaultProxy) -> None:
    proxy.set_mode("http_status", status=503)

    with connect(proxy) as sock:
        # A small send buffer keeps the client sending after the answer: a proxy that closed on unread
        # bytes would reset it mid-body.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(b"PUT /bucket/key HTTP/1.1\r\nHost: s3\r\nContent-Length: %d\r\n\r\n" % len(BIG) + BIG)
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_eof(sock)

    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


def test_truncate_passes_exactly_after_bytes_then_eof(echo_proxy: FaultProxy) -> None:
    payload = os.urandom(4000)
    echo_proxy.set_mode("truncate", after_bytes=1000)

    with connect(echo_proxy) as sock:
        sock.sendall(payload)
        assert read_until_eof(sock) == payload[:1000]
    assert echo_proxy.counters().by_mode[Mode.TRUNCATE] == 1


def test_truncate_cuts_an_http_answer_short(proxy: FaultProxy) -> None:
    proxy.set_mode("truncate", after_bytes=100_000)

    with connect(proxy) as sock:
        sock.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        raw = read_until_eof(sock)
    with pytest.raises(http.client.IncompleteRead):
        get(proxy, "/big")

    assert len(raw) == 100_000
    assert raw.startswith(b"HTTP/1.0 200 ")
    assert BIG[:1000] in raw


@pytest.mark.parametrize(
    ("mode", "params"),
    [
        (Mode.BLACKHOLE, {}),
        (Mode.RESET, {}),
        (Mode.DELAY, {"seconds": 0.5}),
        (Mode.HTTP_STATUS, {"status": 500}),
        (Mode.TRUNCATE, {"after_bytes": 10}),
    ],
)
def test_switching_back_to_pass_recovers(proxy: FaultProxy, mode: Mode, params: dict[str, float]) -> None:
    proxy.set_mode(mode, **params)
    with contextlib.suppress(OSError, http.client.HTTPException):  # each fault breaks the request its own way
        assert get(proxy, "/small", timeout=0.2) != (200, SMALL)

    proxy.set_mode("pass")

    assert proxy.mode is Mode.PASS
    assert get(proxy, "/small") == (200, SMALL)
    by_mode = proxy.counters().by_mode
    assert (by_mode[mode], by_mode[Mode.PASS]) == (1, 1)


def test_set_mode_rejects_unknown_modes_and_wrong_params(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="bogus"):
        proxy.set_mode("bogus")
    with pytest.raises(TypeError, match="seconds"):
        proxy.set_mode("delay")
    with pytest.raises(TypeError, match="pass takes"):
        proxy.set_mode("pass", seconds=1)
    with pytest.raises(ValueError, match="seconds"):
        proxy.set_mode("delay", seconds=-1)
    with pytest.raises(ValueError, match="status"):
        proxy.set_mode("http_status", status=42)
    with pytest.raises(ValueError, match="after_bytes"):
        proxy.set_mode("truncate", after_bytes=-1)
    assert proxy.mode is Mode.PASS


def test_stop_closes_open_connections_promptly(upstream: Upstream) -> None:
    proxy = FaultProxy("127.0.0.1", upstream.server_address[1]).start()
    streaming = connect(proxy)
    streaming.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
    assert streaming.recv(65536)
    proxy.set_mode("blackhole")
    held = connect(proxy)
    held.sendall(b"GET / HTTP/1.0\r\n\r\n")
    port = proxy.port

    started = time.monotonic()
    proxy.stop()

    assert time.monotonic() - started < 1.0
    for sock in (streaming, held):
        with sock, contextlib.suppress(ConnectionResetError):  # closed either way; a timeout would fail
            read_until_eof(sock)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_start_fails_loudly_on_a_port_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        proxy = FaultProxy("127.0.0.1", 9, listen_port=taken.getsockname()[1])
        with pytest.raises(OSError, match="in use"):
            proxy.start()


def test_url_names_the_listening_address(proxy: FaultProxy) -> None:
    assert proxy.url("https") == f"https://127.0.0.1:{proxy.port}"
    with pytest.raises(RuntimeError, match="start"):
        _ = FaultProxy("127.0.0.1", 9).port


def test_parse_command_reads_cli_mode_switches() -> None:
    assert parse_command("delay seconds=1.5") == (Mode.DELAY, {"seconds": 1.5})
    assert parse_command("truncate after_bytes=10\n") == (Mode.TRUNCATE, {"after_bytes": 10})
    assert parse_command("blackhole") == (Mode.BLACKHOLE, {})
    with pytest.raises(ValueError, match="key=value"):
        parse_command("delay 1.5")
