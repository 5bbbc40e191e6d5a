"""One gRPC call's bookkeeping: its outcome as a status code (registry errors by the table in
errors.py; anything else is a logged, counted INTERNAL) and its sd_grpc_* metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import Any

import grpc

from service_discovery.errors import RegistryError, wire_status
from service_discovery.metrics import Metrics

log = logging.getLogger(__name__)


def status_of(exc: RegistryError) -> grpc.StatusCode:
    """The gRPC status code of a registry error (the table is errors.STATUS)."""
    return grpc.StatusCode[wire_status(exc).grpc]


class CallStats:
    """sd_grpc_* metric children kept per (method, code): `labels()` takes a lock and hashes its
    arguments on every call, which shows on the hot read path."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._calls: dict[tuple[str, grpc.StatusCode], Any] = {}
        self._latency: dict[str, Any] = {}

    def done(self, method: str, code: grpc.StatusCode, seconds: float | None) -> None:
        calls = self._calls.get((method, code))
        if calls is None:
            calls = self._calls[(method, code)] = self.metrics.grpc_calls.labels(method, code.name)
        calls.inc()
        if seconds is not None:
            latency = self._latency.get(method)
            if latency is None:
                latency = self._latency[method] = self.metrics.grpc_latency.labels(method)
            latency.observe(seconds)


class Call:
    """Wraps one RPC body: the only place registry errors become status codes.

    Exceptions are swallowed here and remembered as (code, message); the handler then aborts
    with them. Anything that is not a RegistryError is a bug: logged with its traceback, counted
    in sd_internal_errors_total{frontend="grpc"}, answered INTERNAL.
    """

    __slots__ = ("_latency", "_method", "_started", "_stats", "code", "message")

    def __init__(self, stats: CallStats, method: str, *, latency: bool = True) -> None:
        self._stats = stats
        self._method = method
        self._latency = latency
        self.code = grpc.StatusCode.OK
        self.message = ""

    def __enter__(self) -> Call:
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        swallow = True
        if exc is None:
            swallow = False
        elif isinstance(exc, RegistryError):
            self.code, self.message = status_of(exc), exc.message
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            # the client went away (or the server cancelled the call at the end of its grace)
            self.code, swallow = grpc.StatusCode.CANCELLED, False
        elif isinstance(exc, grpc.aio.AbortError):
            self.code, swallow = grpc.StatusCode.UNKNOWN, False  # not raised by our handlers
        elif isinstance(exc, Exception):
            log.error("internal error in gRPC %s", self._method, exc_info=exc)
            self._stats.metrics.internal_errors.labels("grpc").inc()
            self.code, self.message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        else:
            swallow = False
        elapsed = time.perf_counter() - self._started if self._latency else None
        self._stats.done(self._method, self.code, elapsed)
        return swallow
