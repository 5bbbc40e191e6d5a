"""The synchronous client, on the standard library only (`http.client`): keep-alive
connections per replica, the shared retry and failover policy, typed results and errors."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

from service_discovery_client import _calls
from service_discovery_client._base import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    WATCH_WAIT,
    Attempt,
    Base,
    Failure,
    Pause,
    Target,
    WatchState,
    resolve,
)
from service_discovery_client._calls import Call, Response
from service_discovery_client.errors import Conflict, Unavailable
from service_discovery_client.lease import Lease
from service_discovery_client.models import (
    Addresses,
    Endpoint,
    NamedPort,
    Renewal,
    Service,
    Services,
)

T = TypeVar("T")

_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class _Pool:
    """Idle keep-alive connections to one replica (at most `size` kept)."""

    def __init__(self, target: Target, size: int) -> None:
        self.target = target
        self.size = size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def get(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        return self.new(timeout), False

    def new(self, timeout: float) -> http.client.HTTPConnection:
        t = self.target
        if t.scheme == "https":
            return http.client.HTTPSConnection(
                t.host, t.port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(t.host, t.port, timeout=timeout)

    def put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Client:
    """A client of one registry, given one replica address or several (tried in turn).

    `addr`: a URL, a comma-separated list or a list of URLs (default: `SD_ADDR`, else
    http://127.0.0.1:3000); `token`: the bearer token for writes (default: `SD_TOKEN`);
    `timeout`: seconds per attempt; `retries`: further rounds over every address after a first
    one fails (idempotent calls only, or when nothing reached the daemon). Thread-safe.
    """

    def __init__(
        self,
        addr: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        pool_size: int = 8,
    ) -> None:
        self._base = Base(addr, token, timeout=timeout, retries=retries)
        self._pools = {t: _Pool(t, pool_size) for t in self._base.targets}

    def __repr__(self) -> str:
        return repr(self._base).replace("Base", "Client", 1)

    @property
    def timeout(self) -> float:
        return self._base.timeout

    def close(self) -> None:
        """Close idle connections (the client stays usable)."""
        for pool in self._pools.values():
            pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- services ------------------------------------------------------------------------------
    def services(self) -> Services:
        """Every service, without endpoints (`.registry_index`: the registry's)."""
        return self._run(_calls.services())

    def service(self, name: str) -> Service:
        """One service with its live endpoints. `NotFound` if there is none."""
        return self._run(_calls.service(name))

    def create_service(
        self,
        name: str,
        attributes: Mapping[str, str] | None = None,
        named_ports: Mapping[str, NamedPort | Mapping[str, Any]] | None = None,
        *,
        exist_ok: bool = False,
    ) -> Service:
        """Create a service. `Conflict` if it exists, unless `exist_ok` (then it is returned
        as it is, attributes and ports unchanged)."""
        try:
            return self._run(_calls.create_service(name, attributes, named_ports))
        except Conflict:
            if not exist_ok:
                raise
            return self.service(name)

    def delete_service(self, name: str) -> None:
        """Delete a service with its ports and endpoints. `NotFound` if there is none."""
        self._run(_calls.delete_service(name))

    def set_ports(
        self, name: str, ports: Mapping[str, NamedPort | Mapping[str, Any]]
    ) -> dict[str, NamedPort]:
        """Add or replace named ports (`{"http": {"protocol": "tcp", "port": 8000}}` or
        `NamedPort`s); returns all the service's ports."""
        return self._run(_calls.set_ports(name, ports))

    # ---- endpoints -----------------------------------------------------------------------------
    def endpoints(self, name: str) -> list[Endpoint]:
        """The live endpoints of a service."""
        return self._run(_calls.endpoints(name))

    def register(
        self, name: str, ip: str, tags: Sequence[str] = (), ttl: int | None = None
    ) -> Endpoint:
        """Register (or update) an endpoint; with `ttl` seconds it holds a lease that must be
        renewed (`heartbeat`, or let `lease()` do it)."""
        return self._run(_calls.register(name, ip, tags, ttl))

    def deregister(self, name: str, ip: str) -> None:
        """Remove an endpoint. `NotFound` if it is not registered."""
        self._run(_calls.deregister(name, ip))

    def heartbeat(self, name: str, ip: str) -> Renewal:
        """Renew a lease. `NotFound` means "register again"; `Conflict`: the endpoint has no
        lease."""
        return self._run(_calls.heartbeat(name, ip))

    def lease(self, name: str, ip: str, ttl: int = 10, tags: Sequence[str] = ()) -> Lease:
        """A context manager holding a leased registration: registers on entry, renews every
        ttl/3 in a background thread (registering again when the lease was lost, trying on
        through outages), deregisters on exit. See `Lease`."""
        return Lease(self, name, ip, ttl, tags)

    # ---- reads built on the others -------------------------------------------------------------
    def resolve(self, name: str, port_name: str) -> Addresses:
        """`[(ip, port), ...]` of the live endpoints for a named port, in SRV order (priority,
        then weighted random). Works through an outage of every replica from the last good
        answer (`.stale` is then true)."""
        return resolve(self.service(name), port_name)

    @overload
    def watch(self, name: None = None, *, wait: float = WATCH_WAIT) -> Iterator[Services]: ...
    @overload
    def watch(self, name: str, *, wait: float = WATCH_WAIT) -> Iterator[Service | None]: ...
    def watch(self, name: str | None = None, *, wait: float = WATCH_WAIT) -> Iterator[Any]:
        """Yield the current state, then again on every change, from blocking queries: for one
        service its `Service` (None while it does not exist: not created yet, or deleted); for
        none, the list of services. Rides out outages (logging, with backoff) and never ends
        by itself."""
        state = WatchState(name, wait)
        while True:
            try:
                index, value = self._run(state.call())
            except Unavailable as exc:
                time.sleep(state.failed(exc))
                continue
            if state.update(index, value):
                yield value

    # ---- driving the policy --------------------------------------------------------------------
    def _run(self, call: Call[T], *, rounds: int | None = None, timeout: float | None = None) -> T:
        plan = self._base._plan(call, rounds=rounds, timeout=timeout)
        outcome: Response | Failure | None = None
        while True:
            try:
                step = plan.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                outcome = None
            else:
                outcome = self._attempt(step)

    def _attempt(self, step: Attempt) -> Response | Failure:
        pool = self._pools[step.target]
        conn, reused = pool.get(step.timeout)
        for _ in range(2):
            if not reused:
                try:
                    conn.connect()
                except TimeoutError:
                    conn.close()
                    return Failure(False, f"connect timed out after {step.timeout:g} s")
                except OSError as exc:
                    conn.close()
                    return Failure(False, _reason(exc))
            try:
                conn.request(step.method, step.path, step.body, step.headers)
                resp = conn.getresponse()
                body = resp.read()
            except _STALE_CONNECTION as exc:
                conn.close()
                if reused:  # the daemon closed an idle connection: once more on a new one
                    conn, reused = pool.new(step.timeout), False
                    continue
                return Failure(True, _reason(exc))
            except TimeoutError:
                conn.close()
                return Failure(True, f"no answer within {step.timeout:g} s")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                return Failure(True, _reason(exc))
            if resp.will_close:
                conn.close()
            else:
                pool.put(conn)
            headers = {k.lower(): v for k, v in resp.getheaders()}
            return Response(resp.status, headers, body, step.target.url)
        raise AssertionError("unreachable")  # pragma: no cover


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    return str(exc) or type(exc).__name__
