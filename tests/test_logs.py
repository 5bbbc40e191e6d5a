"""The daemon's log under a flood of requests aiohttp cannot parse (logs.MalformedRequests):
one WARNING line per second at most, without a traceback, and a count of what was left out."""

from __future__ import annotations

import logging
import signal
import socket
import time
from pathlib import Path

from aiohttp.http_exceptions import BadHttpMessage

from service_discovery.logs import MalformedRequests
from tests.helpers import Daemon

GARBAGE = b"GET /services HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"


def send_garbage(port: int, times: int) -> None:
    for _ in range(times):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(GARBAGE)
            assert conn.recv(100).split(b"\r\n")[0].endswith(b" 400 Bad Request")


def test_a_flood_of_malformed_requests_writes_a_line_a_second(
    database_url: str, tmp_path: Path
) -> None:
    """1. 200 malformed requests in a burst; 2. after 1.1 s, one more; 3. after SIGTERM the
    log holds no traceback, the first request's line (peer and complaint, at WARNING) and the
    last one's saying how many were left out in between."""
    daemon = Daemon(tmp_path / "daemon.log", env={"DATABASE_URL": database_url})
    with daemon:
        send_garbage(daemon.http_port, 200)
        time.sleep(1.1)
        send_garbage(daemon.http_port, 1)
        daemon.kill(signal.SIGTERM)
        assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 0
    text = daemon.log.read_text()
    lines = [line for line in text.splitlines() if "Error handling request" in line]
    print(*lines, sep="\n")
    assert "Traceback" not in text, text[-3000:]
    assert len(lines) == 2, text[-3000:]
    assert all(" WARNING aiohttp.server: " in line for line in lines), lines
    assert "Invalid character in Content-Length" in lines[0] and "left out" not in lines[0]
    assert lines[1].endswith("(199 more left out)"), lines[1]


def test_other_records_pass_untouched() -> None:
    """Only records carrying an HTTP parser error are rewritten: another exception's record,
    and a plain line, keep their level and traceback."""
    now = [100.0]
    only = MalformedRequests(interval=1.0, clock=lambda: now[0])

    def record(exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "boom %s", ("x",), info)

    other = record(RuntimeError("not a parser error"))
    assert only.filter(other) and other.levelno == logging.ERROR and other.exc_info
    bad = record(BadHttpMessage("Invalid header"))
    assert only.filter(bad) and bad.levelno == logging.WARNING and bad.exc_info is None
    assert bad.getMessage() == "boom x: 400, message: Invalid header"
    assert not only.filter(record(BadHttpMessage("again")))  # within the second
    now[0] += 1.0
    again = record(BadHttpMessage("later"))
    assert only.filter(again) and again.getMessage().endswith("(1 more left out)")
