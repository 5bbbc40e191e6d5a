"""Who hears of a change to the registry copy: subscribers (the DNS answer cache, change
streams), called synchronously as the change is applied, and the HTTP blocking queries waiting
on a service or on the whole registry, each one future woken by the change itself; nothing
polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

# A subscriber hears (service key or None for "everything", reason): reason is one of
# "update", "delete", "expire" (a lease lapsed in memory) or "reload".
ChangeCallback = Callable[[str | None, str], None]


class Announcer:
    """The subscribers and waiters of one registry copy, whose index (of a service, or of the
    registry for None) `index` reads."""

    def __init__(self, index: Callable[[str | None], int]) -> None:
        self._index = index
        self._subscribers: list[ChangeCallback] = []
        self._waiters: dict[str | None, set[asyncio.Future[str]]] = {}
        self._live_changes: dict[str, int] = {}  # key -> lapses and revivals seen
        self.closed = False

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    async def wait(self, name: str | None, index: int, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for something a blocking query on `name` reports.

        For one service: its index passes `index`, or its live endpoints change without the
        index moving (a lease lapsed in memory, or came back). For the registry (`name` None):
        the registry version passes `index`. A reload or `close` ends every wait. Each waiter is
        one future woken by `announce`; nothing polls.
        """
        if self.closed or timeout <= 0 or self._index(name) > index:
            return
        key = name.lower() if name is not None else None
        lapses = self._live_changes.get(key, 0) if key is not None else 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            fut: asyncio.Future[str] = loop.create_future()
            waiters = self._waiters.setdefault(key, set())
            waiters.add(fut)
            try:
                async with asyncio.timeout_at(deadline):
                    reason = await fut
            except TimeoutError:
                return
            finally:
                waiters.discard(fut)
                if not waiters and self._waiters.get(key) is waiters:
                    del self._waiters[key]
            if self.closed or reason in ("reload", "release") or self._index(name) > index:
                return
            if key is not None and self._live_changes.get(key, 0) != lapses:
                return
            # Nothing this query reports changed (the same version read again, a renewal, or
            # another service's endpoints for a listing): keep waiting.

    def live_changed(self, key: str) -> None:
        """Count a change of a service's live endpoints that moves no index (a lapse in memory,
        or a lapsed lease renewed), so the blocking queries on it see it."""
        self._live_changes[key] = self._live_changes.get(key, 0) + 1

    def forget(self, key: str) -> None:
        """The service is gone: its count of live changes goes with it."""
        self._live_changes.pop(key, None)

    def announce(self, key: str | None, reason: str) -> None:
        """Tell subscribers, then wake the blocking queries on `key` (None: all of them) and on
        the registry as a whole."""
        for cb in list(self._subscribers):
            try:
                cb(key, reason)
            except Exception:
                log.exception("registry subscriber failed")
        self.wake(tuple(self._waiters) if key is None else (key, None), reason)

    def wake(self, keys: Iterable[str | None], reason: str) -> None:
        """Wake the blocking queries on `keys` (None: on the registry) without telling the
        subscribers (the registry version moved, nothing a subscriber caches)."""
        for k in keys:
            for fut in self._waiters.get(k, ()):
                if not fut.done():
                    fut.set_result(reason)

    def release(self) -> None:
        """Answer every waiting blocking query now, with what it has (shutdown)."""
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result("release")

    def close(self) -> None:
        """Answer every blocking query now (shutdown); later ones return at once."""
        self.closed = True
        self.release()
