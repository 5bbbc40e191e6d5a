"""TCP proxies in front of the test PostgreSQL: one that a fault test can break (refuse,
blackhole, cut, restore), one that holds back notifications; both reach the server whether its
URL names a TCP host or, as the embedded server's does, a unix socket directory (`?host=/dir`)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit


async def open_upstream(database_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(database_url)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    port = parts.port or 5432
    if socket_dir.startswith("/"):
        return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port}")
    return await asyncio.open_connection(parts.hostname or "127.0.0.1", port)


def through(database_url: str, port: int) -> str:
    """`database_url` pointed at 127.0.0.1:`port` (the proxy), same user, password, database."""
    parts = urlsplit(database_url)
    auth = parts.netloc.rpartition("@")[0]
    query = {k: v for k, v in parse_qs(parts.query).items() if k != "host"}
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, doseq=True)))


class TcpProxy:
    """127.0.0.1:<port> -> upstream, in this event loop, with four modes.

    - forward: bytes pass both ways.
    - refuse: the listener is closed and every connection cut (a database that is down).
    - blackhole: connections are accepted and kept, but bytes are dropped both ways, also on
      connections that were open before (a network partition: only timeouts notice it).
    - bad_password: new connections are answered as PostgreSQL answers a wrong password
      (SQLSTATE 28P01), whatever the server's own authentication (trust, on a test machine).

    `restore` cuts whatever is left (a partition's dead connections) and forwards again on the
    same port, so the daemon's DATABASE_URL stays valid.
    """

    def __init__(self, upstream_url: str) -> None:
        self._upstream = upstream_url
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.mode = "forward"
        self.port = 0
        self.accepted = 0

    def url(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by the proxy's."""
        return through(database_url, self.port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        self.mode = "refuse"
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def bad_password(self) -> None:
        self.mode = "bad_password"

    async def restore(self) -> None:
        self.cut()
        self.mode = "forward"
        if self._server is None:
            await self.start()

    def cut(self) -> None:
        """Abort every connection through the proxy (both sides) at once."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        await self.refuse()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        if self.mode == "blackhole":
            await self._pipe(reader, None)
            return
        if self.mode == "bad_password":
            await _refuse_password(reader, writer)
            return
        try:
            up_reader, up_writer = await open_upstream(self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the proxy is closing
        finally:
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None
    ) -> None:
        try:
            while data := await reader.read(65536):
                if writer is None or self.mode == "blackhole":
                    continue  # dropped: a silent network, not a closed one
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if writer is not None:
                writer.transport.abort()


_SSL_OR_GSS = (80877103, 80877104)  # SSLRequest, GSSENCRequest: answered "N" (not supported)
_PASSWORD_FAILED = (
    b"".join(
        field + text.encode() + b"\0"
        for field, text in (
            (b"S", "FATAL"),
            (b"V", "FATAL"),
            (b"C", "28P01"),
            (b"M", "password authentication failed (pgproxy)"),
        )
    )
    + b"\0"
)


async def _refuse_password(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the client's startup (after declining SSL and GSS encryption) and answer it with the
    ErrorResponse a wrong password gets, then close."""
    try:
        while True:
            length, code = struct.unpack("!ii", await reader.readexactly(8))
            await reader.readexactly(length - 8)
            if code not in _SSL_OR_GSS:
                break
            writer.write(b"N")
        writer.write(b"E" + struct.pack("!i", 4 + len(_PASSWORD_FAILED)) + _PASSWORD_FAILED)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()  # a FIN after the answer (an abort could discard it unread)


class NotificationHold:
    """A TCP proxy to PostgreSQL that passes everything, except that while `holding` it keeps
    back the server's NotificationResponse messages (type 'A') and hands them on, in order, at
    `release`: a replica that hears other replicas' changes late, under the test's control."""

    def __init__(self, database_url: str) -> None:
        self._upstream = database_url
        self._server: asyncio.Server | None = None
        self._held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.holding = False
        self.url = ""

    async def __aenter__(self) -> NotificationHold:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        # no TLS, so the proxy can read the message stream
        url = through(self._upstream, port)
        self.url = url + ("&" if "?" in url else "?") + "sslmode=disable"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def release(self) -> None:
        self.holding = False
        for writer, message in self._held:
            writer.write(message)
        self._held.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await open_upstream(self._upstream)

        async def to_server() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
            up_writer.close()

        async def to_client() -> None:
            # Backend messages: a type byte, a 4-byte length that counts itself, the body.
            with contextlib.suppress(asyncio.IncompleteReadError):
                while True:
                    header = await up_reader.readexactly(5)
                    body = await up_reader.readexactly(int.from_bytes(header[1:], "big") - 4)
                    if header[:1] == b"A" and self.holding:
                        self._held.append((writer, header + body))
                    else:
                        writer.write(header + body)

        tasks = {asyncio.create_task(to_server()), asyncio.create_task(to_client())}
        self._tasks |= tasks
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        writer.close()
        up_writer.close()
