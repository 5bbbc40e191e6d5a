"""What the sync and the async client share: addresses and token (arguments, else SD_ADDR and
SD_TOKEN), the retry and failover policy, the last-good-answer cache, and the watch loop's
state. The policy is a generator that yields the I/O it wants done (`Attempt`, `Pause`) and
receives the outcome; each client only drives it with its own sockets and sleeps."""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from service_discovery_client import _calls
from service_discovery_client._calls import Call, Response
from service_discovery_client.errors import (
    NotFound,
    ServiceDiscoveryError,
    Unavailable,
    from_response,
)
from service_discovery_client.models import Address, Addresses, Service, srv_order

log = logging.getLogger("service_discovery_client")

T = TypeVar("T")

DEFAULT_ADDR = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT = 5.0  # seconds per attempt
DEFAULT_RETRIES = 2  # further rounds over every address after the first
BACKOFF = 0.1  # first pause between rounds; doubles up to MAX_BACKOFF, with jitter
MAX_BACKOFF = 2.0
CACHE_SIZE = 1024  # services whose last good answer is kept
USER_AGENT = "service-discovery-client/0.1"


@dataclass(frozen=True)
class Target:
    """One replica's base URL."""

    url: str
    scheme: str
    host: str
    port: int
    prefix: str  # a path prefix, for a daemon behind a proxy

    @classmethod
    def parse(cls, text: str) -> Target:
        text = text.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) address: {text!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        prefix = parts.path.rstrip("/")
        url = f"{parts.scheme}://{parts.netloc}{prefix}"
        return cls(url, parts.scheme, parts.hostname, port, prefix)


def targets(addr: str | Sequence[str] | None) -> list[Target]:
    """Replica addresses: a URL, a comma-separated string or a list; None reads SD_ADDR."""
    if addr is None:
        addr = os.environ.get("SD_ADDR") or DEFAULT_ADDR
    items = addr.split(",") if isinstance(addr, str) else list(addr)
    found = [Target.parse(a) for a in items if a.strip()]
    if not found:
        raise ValueError("no service-discovery address given")
    return found


@dataclass(frozen=True)
class Attempt:
    """Send `method path` with `body` to `target`, waiting at most `timeout` seconds."""

    target: Target
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    timeout: float


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Failure:
    """No answer. `sent`: the request may have reached the daemon (a timeout or a connection
    lost after sending), so only an idempotent call may be sent again."""

    sent: bool
    reason: str


Plan = Generator[Attempt | Pause, Response | Failure | None, T]


class Base:
    """Settings, failover state and cache. Thread-safe: a lease keeper's thread and the
    application's threads share one client."""

    def __init__(
        self,
        addr: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.targets = targets(addr)
        self.token = token if token is not None else (os.environ.get("SD_TOKEN") or None)
        self.timeout = timeout
        self.retries = retries
        self._current = 0
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._stale: set[str] = set()

    def __repr__(self) -> str:  # never the token
        urls = ",".join(t.url for t in self.targets)
        return f"{type(self).__name__}({urls!r}, token={'***' if self.token else None})"

    # ---- failover -------------------------------------------------------------------------------
    def _rotation(self) -> list[Target]:
        """Every address once, starting with the one that answered last."""
        with self._lock:
            start = self._current
        return self.targets[start:] + self.targets[:start]

    def _demote(self, target: Target) -> None:
        """`target` failed: later calls start with the next address (sticky failover)."""
        with self._lock:
            if self.targets[self._current] is target:
                self._current = (self._current + 1) % len(self.targets)

    def _headers(self, call: Call[Any]) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    # ---- the policy -----------------------------------------------------------------------------
    def _plan(
        self, call: Call[T], *, rounds: int | None = None, timeout: float | None = None
    ) -> Plan[T]:
        """Run `call`: try every address in turn, `rounds` times with a growing pause between
        rounds. A refused connection is always tried elsewhere (nothing was sent); a timeout, a
        lost connection or a 503/429 only for an idempotent call (a 503 `not_ready` for any
        call: a replica that is not ready does nothing). When every attempt failed, a cached
        read is answered from its last good result, marked stale; otherwise `Unavailable`."""
        rounds = self.retries + 1 if rounds is None else max(1, rounds)
        per_attempt = (self.timeout if timeout is None else timeout) + call.wait
        body = call.payload()
        headers = self._headers(call)
        reasons: list[str] = []
        last: ServiceDiscoveryError | None = None
        maybe_done = False
        for n in range(rounds):
            if n:
                delay = min(MAX_BACKOFF, BACKOFF * 2 ** (n - 1))
                yield Pause(random.uniform(delay / 2, delay))
            for target in self._rotation():
                outcome = yield Attempt(
                    target, call.method, target.prefix + call.target(), body, headers, per_attempt
                )
                if isinstance(outcome, Failure):
                    self._demote(target)
                    reasons.append(f"{target.url}: {outcome.reason}")
                    log.info("%s %s at %s: %s", call.method, call.path, target.url, outcome.reason)
                    if outcome.sent:
                        maybe_done = True
                        if not call.idempotent:
                            raise Unavailable(
                                f"{target.url}: {outcome.reason}; the request may or may not "
                                "have been applied",
                                code="unreachable",
                                address=target.url,
                            )
                    continue
                assert isinstance(outcome, Response)
                if outcome.status in call.accept:
                    return self._keep(call, call.parse(outcome))
                if call.gone_ok and maybe_done and outcome.status == 404:
                    return call.parse(outcome)  # an earlier attempt that went unanswered did it
                error = from_response(outcome.status, outcome.body, target.url)
                retry = call.idempotent or error.code == "not_ready"
                if isinstance(error, Unavailable) and retry:
                    self._demote(target)
                    reasons.append(f"{target.url}: {error.code} ({error.status})")
                    log.info("%s %s at %s: %s", call.method, call.path, target.url, error)
                    last = error
                    continue
                if isinstance(error, NotFound) and call.cache_key:
                    with self._lock:
                        self._cache.pop(call.cache_key, None)
                raise error
        stale = self._stale_answer(call)
        if stale is not None:
            return stale
        summary = "; ".join(dict.fromkeys(reasons))
        if last is not None:  # a replica answered 503 or 429: its words first
            raise type(last)(
                f"{last.message} [{summary}]",
                code=last.code,
                status=last.status,
                address=last.address,
            )
        raise Unavailable(f"no replica answered: {summary}", code="unreachable")

    # ---- last good answers ----------------------------------------------------------------------
    def _keep(self, call: Call[T], result: T) -> T:
        key = call.cache_key
        if key is not None:
            with self._lock:
                self._cache[key] = result
                self._cache.move_to_end(key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
                recovered = key in self._stale
                self._stale.discard(key)
            if recovered:
                log.info("%s: a replica answers again; fresh answers from now on", key)
        return result

    def _stale_answer(self, call: Call[T]) -> T | None:
        key = call.cache_key
        if key is None or call.mark_stale is None:
            return None
        with self._lock:
            if key not in self._cache:
                return None
            cached: T = self._cache[key]
            first = key not in self._stale
            self._stale.add(key)
        if first:
            log.warning("%s: no replica reachable; serving the last good answer (stale)", key)
        return call.mark_stale(cached)


# ---- watches -------------------------------------------------------------------------------------
WATCH_WAIT = 60.0  # seconds a blocking query waits on the daemon
WATCH_MAX_BACKOFF = 10.0


class WatchState:
    """A watch loop's memory: the index to block on, what was last reported, and the backoff
    after failures. `update` says whether an answer is a change worth reporting: the index moved,
    or (for one service) its live endpoints changed without the index moving (a lease lapsed)."""

    def __init__(self, name: str | None, wait: float) -> None:
        self.name = name
        self.wait = wait
        self.index: int | None = None
        self._seen: Any = _UNSEEN
        self._failures = 0

    def call(self) -> Call[tuple[int, Any]]:
        if self.name is None:
            return _calls.watch_services(self.index, self.wait)
        return _calls.watch_service(self.name, self.index, self.wait)

    def update(self, index: int, value: Any) -> bool:
        self._failures = 0
        seen = _visible(value)
        # An index that goes back (a database restored, another replica behind): start over.
        changed = self.index is None or index != self.index or seen != self._seen
        self.index, self._seen = index, seen
        return changed

    def failed(self, error: ServiceDiscoveryError) -> float:
        """Seconds to wait before the next try after `error` (a watch never gives up on
        `Unavailable`)."""
        self._failures += 1
        delay = min(WATCH_MAX_BACKOFF, 0.5 * 2 ** (self._failures - 1))
        log.warning("watch %s: %s; retrying in %.1f s", self.name or "services", error, delay)
        return random.uniform(delay / 2, delay)


_UNSEEN = object()


def _visible(value: Any) -> Any:
    """What a watcher can see of an answer, leaving out lease expiry times (which move with
    every renewal and end no wait)."""
    if isinstance(value, Service):
        endpoints = tuple(sorted((e.ip, e.tags) for e in value.endpoints))
        return (value.name, value.attributes, value.named_ports, endpoints)
    if isinstance(value, list):
        return tuple((s.name, s.index) for s in value)
    return value


def resolve(svc: Service, port_name: str) -> Addresses:
    """The (ip, port) pairs of `svc`'s live endpoints for its named port, in SRV order."""
    port = svc.named_ports.get(port_name)
    if port is None:
        raise NotFound(
            f"service {svc.name!r} has no port named {port_name!r}"
            f" (it has: {', '.join(sorted(svc.named_ports)) or 'none'})",
            code="not_found",
        )
    triples = [(port.priority, port.weight, Address(e.ip, port.port)) for e in svc.endpoints]
    return Addresses(srv_order(triples), stale=svc.stale)
