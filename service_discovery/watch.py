"""What every front-end's watches share: one limit on open watches per client address, the
blocking-query parameters (`?index=N&wait=30s`, Consul's), and one cache of encoded answers.

HTTP blocking queries, gRPC Watch streams (and the Consul-compatible API to come) all take
their slots from the one `WatchLimiter`, so a client holds at most SD_MAX_WATCHES_PER_CLIENT
watches whatever it speaks, and all keep their encoded answers in the one `AnswerCache`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from service_discovery.catalog import Catalog
from service_discovery.errors import InvalidInput, TooManyRequests
from service_discovery.model import Service

T = TypeVar("T")

# A blocking query's `wait`: a number of milliseconds, seconds (the default unit) or minutes.
# The OpenAPI document states the same pattern (the JSON Schema form of this regex).
WAIT_PATTERN = r"^\d+(\.\d+)?(ms|s|m)?$"
DEFAULT_WAIT = "5m"
_WAIT = re.compile(WAIT_PATTERN)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def blocking_query(index: str | None, wait: str | None, cap: float) -> tuple[int, float] | None:
    """Parse a blocking query's `index` and `wait` into (index, seconds to wait at most).

    None when there is no `index` (an ordinary read). `wait` defaults to 5 minutes and is capped
    at `cap` (SD_WATCH_MAX_WAIT_SECONDS); up to 1/16 of it is added at random, as Consul does,
    so watchers that started together do not all time out and come back in the same instant.
    """
    if index is None:
        return None
    try:
        value = int(index)
    except ValueError:
        raise InvalidInput("index must be a non-negative integer (the X-Index of a read)") from None
    if value < 0:
        raise InvalidInput("index must be a non-negative integer (the X-Index of a read)")
    raw = (DEFAULT_WAIT if wait is None else wait).strip().lower()
    m = _WAIT.match(raw)
    if not m:
        raise InvalidInput("wait must be a duration such as 30s, 500ms or 5m")
    unit = m.group(2)
    number = raw[: -len(unit)] if unit else raw
    seconds = min(float(number) * _UNIT[unit], cap)
    return value, seconds + random.uniform(0, seconds / 16)


class WatchLimiter:
    """Open watches, counted per client address and in all, across every front-end.

    A watch holds its slot for as long as it waits (`with limiter.hold(address):`); over either
    limit (SD_MAX_WATCHES_PER_CLIENT, SD_MAX_WATCHES), TooManyRequests (HTTP 429, gRPC
    RESOURCE_EXHAUSTED). Behind a proxy all clients share its address. Once `close` ran
    (shutdown, the listeners closed), a blocking query no longer waits: it answers at once.
    """

    def __init__(self, per_client: int, limit: int) -> None:
        self.per_client = per_client
        self.limit = limit
        self.total = 0
        self.closing = False
        self._held: Counter[str] = Counter()

    def held(self, client: str) -> int:
        return self._held[client]

    def close(self) -> None:
        self.closing = True

    @contextmanager
    def hold(self, client: str) -> Iterator[None]:
        if self._held[client] >= self.per_client:
            raise TooManyRequests(
                f"at most {self.per_client} open watches per client address (blocking queries "
                "and Watch streams together); close some or wait for them to return"
            )
        if self.total >= self.limit:
            raise TooManyRequests(
                f"at most {self.limit} open watches on this server, every client together; "
                "try again later or on another replica"
            )
        self._held[client] += 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            self._held[client] -= 1
            if self._held[client] <= 0:
                del self._held[client]


class Answers(Generic[T]):
    """One wire format's encoded answer per service, kept while the service's view is current:
    views are immutable and replaced on every change, so identity says whether it is."""

    __slots__ = ("_encode", "_kept")

    def __init__(self, encode: Callable[[Service], T]) -> None:
        self._encode = encode
        self._kept: dict[str, tuple[Service, T]] = {}

    def __call__(self, svc: Service) -> T:
        """The encoded answer for `svc` (a view from the Catalog), built on first use."""
        kept = self._kept.get(svc.key)
        if kept is None or kept[0] is not svc:
            kept = self._kept[svc.key] = (svc, self._encode(svc))
        return kept[1]

    def forget(self, key: str | None) -> None:
        if key is None:
            self._kept.clear()
        else:
            self._kept.pop(key, None)

    def __len__(self) -> int:
        return len(self._kept)


class Whole(Generic[T]):
    """One wire format's encoded answer about every service (the listing), kept until anything
    changes: every reader between two changes gets the same one."""

    __slots__ = ("_encode", "_kept")

    def __init__(self, encode: Callable[[], T]) -> None:
        self._encode = encode
        self._kept: tuple[T] | None = None

    def __call__(self) -> T:
        if self._kept is None:
            self._kept = (self._encode(),)
        return self._kept[0]

    def forget(self, key: str | None) -> None:
        self._kept = None


class AnswerCache:
    """Every front-end's encoded answers (`format` gives each wire format its own `Answers`,
    `whole` its own `Whole`), dropped when their service changes (a `Whole` on any change),
    all of them on a reload: so they hold at most one answer per existing service and format.
    Watchers woken by a change therefore encode the new state once for all of them, not once
    each."""

    def __init__(self, catalog: Catalog) -> None:
        self._forgets: list[Callable[[str | None], None]] = []
        self._unsubscribe: Callable[[], None] | None = catalog.subscribe(self._forget)

    def format(self, encode: Callable[[Service], T]) -> Answers[T]:
        answers = Answers(encode)
        self._forgets.append(answers.forget)
        return answers

    def whole(self, encode: Callable[[], T]) -> Whole[T]:
        whole = Whole(encode)
        self._forgets.append(whole.forget)
        return whole

    def _forget(self, key: str | None, reason: str) -> None:
        for forget in self._forgets:
            forget(key)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
