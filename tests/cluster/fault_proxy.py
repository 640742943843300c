"""A TCP proxy that forwards bytes between a client and one upstream, and injects faults on demand.

Tests put it between the operator and a dependency (kube-apiserver over TLS, Prometheus or the S3 server
over HTTP). It never speaks the protocol it carries, except to answer in `http_status` mode, which is
for plain-HTTP upstreams only.

Modes, switched at runtime with `set_mode(mode, **params)`:
  pass         forward both ways.
  blackhole    accept, read and discard, never answer, never close. Open forwarding connections stall
               for good: nothing more reaches their client, as in a watch that silently stopped.
  reset        accept, then close with RST. Every open connection is reset when the mode is set.
  delay        forward, holding each chunk from upstream `seconds` before writing it to the client;
               applies to open forwarding connections too, while the mode lasts.
  http_status  answer each new connection's request with an HTTP/1.1 `status` response, small body and
               `Connection: close`, without contacting upstream.
  truncate     forward the request, pass the first `after_bytes` bytes of the answer, then close.

Modes other than blackhole and reset leave open connections as they were; the new mode governs new ones.

    with FaultProxy("127.0.0.1", 9090) as proxy:
        client = make_client(proxy.url("http"))
        proxy.set_mode("http_status", status=503)

CLI: `python tests/cluster/fault_proxy.py --upstream host:port --listen-port N --mode delay --seconds 2`;
then one command a line on stdin switches the mode, e.g. `blackhole` or `truncate after_bytes=100`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import enum
import http
import signal
import socket
import struct
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

_CHUNK = 64 * 1024
# Enough for any request head our clients send; a longer one is answered anyway.
_MAX_REQUEST_HEAD = 64 * 1024
# How long an http_status answer waits for the client to close before the proxy closes first.
_LINGER_SECONDS = 5.0
_START_TIMEOUT_SECONDS = 5.0


class Mode(enum.StrEnum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    DELAY = "delay"
    HTTP_STATUS = "http_status"
    TRUNCATE = "truncate"


_PARAMS: Mapping[Mode, frozenset[str]] = {
    Mode.PASS: frozenset(),
    Mode.BLACKHOLE: frozenset(),
    Mode.RESET: frozenset(),
    Mode.DELAY: frozenset({"seconds"}),
    Mode.HTTP_STATUS: frozenset({"status"}),
    Mode.TRUNCATE: frozenset({"after_bytes"}),
}
_FORWARDING = frozenset({Mode.PASS, Mode.DELAY, Mode.TRUNCATE})


@dataclass(frozen=True)
class Fault:
    mode: Mode
    seconds: float = 0.0
    status: int = 200
    after_bytes: int = 0

    @classmethod
    def parse(cls, mode: Mode | str, params: Mapping[str, object]) -> Fault:
        """Validate a mode and exactly the parameters it takes; raise ValueError or TypeError otherwise."""
        mode = Mode(mode)
        if set(params) != _PARAMS[mode]:
            raise TypeError(f"mode {mode} takes {sorted(_PARAMS[mode])}, got {sorted(params)}")
        seconds = params.get("seconds", 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
        status = params.get("status", 200)
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"status must be an HTTP status from 200 to 599, got {status!r}")
        after_bytes = params.get("after_bytes", 0)
        if isinstance(after_bytes, bool) or not isinstance(after_bytes, int) or after_bytes < 0:
            raise ValueError(f"after_bytes must be an int >= 0, got {after_bytes!r}")
        return cls(mode, float(seconds), status, after_bytes)


@dataclass(frozen=True)
class Counters:
    """A snapshot: connections accepted, how many each mode handled, and what mode switches did."""

    accepted: int
    by_mode: Mapping[Mode, int]
    upstream_connections: int
    stalled_existing: int
    reset_existing: int


def http_response(status: int) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected Fault"
    body = f"fault_proxy: injected {status} {reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _flush_on_drain(writer: asyncio.StreamWriter) -> None:
    # drain() then waits until every byte is in the kernel, so a close or a stall never drops or leaks any.
    writer.transport.set_write_buffer_limits(high=0)


class _Conn:
    """One accepted client and, when forwarding, its upstream connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, forwarding: bool) -> None:
        self.reader = reader
        self.writer = writer
        _flush_on_drain(writer)
        self.forwarding = forwarding
        self.upstream_reader: asyncio.StreamReader | None = None
        self.upstream_writer: asyncio.StreamWriter | None = None
        # Stalled for good: a stream that lost bytes cannot resume intact; the client must notice and retry.
        self.stalled = False
        self.truncated = False

    def abort(self) -> None:
        self.writer.transport.abort()
        if self.upstream_writer is not None:
            self.upstream_writer.transport.abort()

    def reset(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            # Linger 0 makes close() send RST instead of FIN.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()


class FaultProxy:
    """Forward TCP from listen_host:listen_port to upstream_host:upstream_port, with faults on demand.

    The proxy runs an asyncio loop in a daemon thread; every public method is safe to call from any other
    thread.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, listen_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._lock = threading.Lock()
        self._fault = Fault(Mode.PASS)
        self._accepted = 0
        self._by_mode = dict.fromkeys(Mode, 0)
        self._upstream_connections = 0
        self._stalled_existing = 0
        self._reset_existing = 0
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sockets: set[socket.socket] = set()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy is not listening: call start() first")
        return self._port

    @property
    def mode(self) -> Mode:
        return self._fault.mode

    def url(self, scheme: str = "http") -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("the proxy was already started")
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        # Bound here, not on the loop, so a port in use raises OSError to the caller.
        listener = socket.create_server((self.listen_host, self._listen_port), family=family, backlog=128)
        listener.setblocking(False)
        self._port = listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, args=(listener,), name=f"fault-proxy-{self.upstream_port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_SECONDS) or self._error is not None:
            listener.close()
            raise RuntimeError("the proxy's event loop did not start") from self._error
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, and wait for the proxy thread to end."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have ended on its own already
                loop.call_soon_threadsafe(stopping.set)
        if thread is not None:
            thread.join(_START_TIMEOUT_SECONDS)
        self._loop = None

    def set_mode(self, mode: Mode | str, **params: float) -> None:
        """Switch mode; on return, open connections a blackhole or reset applies to are already hit."""
        fault = Fault.parse(mode, params)
        with self._lock:
            self._fault = fault
        loop = self._loop
        if loop is None or fault.mode not in {Mode.BLACKHOLE, Mode.RESET}:
            return
        if self._thread is threading.current_thread():
            self._apply_to_open(fault.mode)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def apply() -> None:
            try:
                self._apply_to_open(fault.mode)
            except Exception as err:
                done.set_exception(err)
            else:
                # Answer one loop turn later, once the aborted sockets' close callbacks have run.
                loop.call_soon(done.set_result, None)

        try:
            loop.call_soon_threadsafe(apply)
        except RuntimeError:
            return  # the loop closed meanwhile: there are no open connections left to fault
        done.result(_START_TIMEOUT_SECONDS)

    def counters(self) -> Counters:
        with self._lock:
            return Counters(
                accepted=self._accepted,
                by_mode=dict(self._by_mode),
                upstream_connections=self._upstream_connections,
                stalled_existing=self._stalled_existing,
                reset_existing=self._reset_existing,
            )

    # Everything below runs on the proxy's event loop.

    def _run(self, listener: socket.socket) -> None:
        try:
            asyncio.run(self._serve(listener))
        except BaseException as err:  # start() reports it; a daemon thread has no one else to tell
            self._error = err
        finally:
            self._ready.set()

    async def _serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._loop = loop
        # Our own accept callback, not start_server or sock_accept: on 3.11 both can drop a connection
        # accepted during shutdown without closing it, and its client would hang.
        loop.add_reader(listener.fileno(), self._accept, listener)
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            loop.remove_reader(listener.fileno())
            listener.close()
            for task in list(self._tasks):
                task.cancel()  # each handler closes its connections on the way out
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for sock in list(self._sockets):  # a handler cancelled before it first ran never closed its own
                sock.close()
            await asyncio.sleep(0)  # let aborted transports run their close callbacks before the loop ends

    def _accept(self, listener: socket.socket) -> None:
        assert self._loop is not None
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # nothing left to accept (or a client gave up): wait for the next readiness
            sock.setblocking(False)
            self._sockets.add(sock)
            task = self._loop.create_task(self._handle(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _apply_to_open(self, mode: Mode) -> None:
        for conn in list(self._conns):
            if mode is Mode.RESET:
                conn.reset()
                self._conns.discard(conn)
                with self._lock:
                    self._reset_existing += 1
            elif conn.forwarding and not conn.stalled:
                conn.stalled = True
                with self._lock:
                    self._stalled_existing += 1

    def _live_delay(self) -> float:
        fault = self._fault  # one read of an immutable value: no lock needed
        return fault.seconds if fault.mode is Mode.DELAY else 0.0

    async def _handle(self, sock: socket.socket) -> None:
        with self._lock:
            fault = self._fault
            self._accepted += 1
            self._by_mode[fault.mode] += 1
        conn: _Conn | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
            conn = _Conn(reader, writer, forwarding=fault.mode in _FORWARDING)
            self._conns.add(conn)
            match fault.mode:
                case Mode.RESET:
                    conn.reset()
                case Mode.BLACKHOLE:
                    await self._discard_until_eof(conn)
                case Mode.HTTP_STATUS:
                    await self._answer_status(conn, fault.status)
                case Mode.PASS | Mode.DELAY | Mode.TRUNCATE:
                    await self._forward(conn, fault.after_bytes if fault.mode is Mode.TRUNCATE else None)
        except OSError:
            if conn is not None:
                conn.reset()
        finally:
            if conn is not None:
                conn.abort()
                self._conns.discard(conn)
            sock.close()
            self._sockets.discard(sock)

    async def _discard_until_eof(self, conn: _Conn) -> None:
        while await conn.reader.read(_CHUNK):
            pass

    async def _answer_status(self, conn: _Conn, status: int) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < _MAX_REQUEST_HEAD:
            chunk = await conn.reader.read(_CHUNK)
            if not chunk:
                break
            head += chunk
        conn.writer.write(http_response(status))
        await conn.writer.drain()
        conn.writer.write_eof()
        # Read the rest of the request before closing: unread bytes would turn our close into an RST.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LINGER_SECONDS):
                await self._discard_until_eof(conn)

    async def _forward(self, conn: _Conn, budget: int | None) -> None:
        try:
            conn.upstream_reader, conn.upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            conn.reset()  # the nearest a client can see to the upstream refusing it
            return
        _flush_on_drain(conn.upstream_writer)
        with self._lock:
            self._upstream_connections += 1
        await asyncio.gather(self._to_upstream(conn), self._to_client(conn, budget))

    async def _to_upstream(self, conn: _Conn) -> None:
        assert conn.upstream_writer is not None
        try:
            while data := await conn.reader.read(_CHUNK):
                if conn.stalled or conn.truncated:
                    continue
                conn.upstream_writer.write(data)
                try:
                    await conn.upstream_writer.drain()
                except OSError:
                    if not (conn.stalled or conn.truncated):  # once cut off, upstream's failures are moot
                        raise
            if conn.stalled or conn.truncated:
                conn.upstream_writer.transport.abort()  # the client left; nothing remains to hold open
            elif conn.upstream_writer.can_write_eof():
                conn.upstream_writer.write_eof()  # pass the half-close on, for request-then-shutdown clients
        except OSError:
            conn.reset()  # one side broke: break the other too, so neither waits forever

    async def _to_client(self, conn: _Conn, budget: int | None) -> None:
        assert conn.upstream_reader is not None and conn.upstream_writer is not None
        try:
            while data := await conn.upstream_reader.read(_CHUNK):
                delay = self._live_delay()
                if delay:
                    await asyncio.sleep(delay)
                if conn.stalled:
                    continue
                if budget is not None:
                    data, budget = data[:budget], budget - min(budget, len(data))
                conn.writer.write(data)
                await conn.writer.drain()
                if budget == 0:
                    conn.truncated = True
                    conn.upstream_writer.transport.abort()
                    break
            if not conn.stalled:
                conn.writer.write_eof()  # half-close: a full close with unread input would send RST
        except OSError:
            if not conn.stalled:  # a stalled client must see nothing, not even upstream breaking
                conn.reset()


def parse_command(line: str) -> tuple[Mode, dict[str, float]]:
    """Parse a CLI mode command: `delay seconds=1.5`, `http_status status=503`, `blackhole`."""
    words = line.split()
    if not words:
        raise ValueError("empty command")
    params: dict[str, float] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {word!r}")
        params[key] = float(value) if key == "seconds" else int(value)
    return Mode(words[0]), params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--mode", default="pass", choices=[mode.value for mode in Mode])
    parser.add_argument("--seconds", type=float, help="delay: seconds to hold each chunk")
    parser.add_argument("--status", type=int, help="http_status: the status to answer")
    parser.add_argument("--after-bytes", type=int, help="truncate: bytes of the answer to pass")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    given = {"seconds": args.seconds, "status": args.status, "after_bytes": args.after_bytes}
    params = {key: value for key, value in given.items() if value is not None}
    # SIGTERM unwinds like Ctrl-C, so the proxy closes its connections on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    proxy = FaultProxy(host, int(port), args.listen_host, args.listen_port)
    try:
        proxy.set_mode(args.mode, **params)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    with proxy:
        print(
            f"listening on {proxy.listen_host}:{proxy.port} -> {args.upstream}, mode {proxy.mode}", flush=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            for line in sys.stdin:
                if not line.strip():
                    continue
                try:
                    mode, params = parse_command(line)
                    proxy.set_mode(mode, **params)
                except (TypeError, ValueError) as err:
                    print(f"error: {err}", file=sys.stderr, flush=True)
                    continue
                print(f"mode {proxy.mode}: {proxy.counters()}", flush=True)
            threading.Event().wait()  # stdin closed (run in the background): serve until a signal
    return 0


if __name__ == "__main__":
    sys.exit(main())
