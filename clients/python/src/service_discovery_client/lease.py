"""Lease keepers: hold a leased registration for as long as a block of code runs.

`LeaseState` decides (no I/O): renew every ttl/3 (up to 15 % earlier, at random); after a
failure try again within a second (never later than ttl/3); a 404 or 409 on a renewal means the
lease is gone (it lapsed, or the endpoint was removed or registered without a lease), so
register again at once. `Lease` runs it in a background thread for the sync client;
`aio.AsyncLease` in a task.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from service_discovery_client import _calls
from service_discovery_client._calls import Call
from service_discovery_client.errors import (
    Conflict,
    NotFound,
    ServiceDiscoveryError,
    Unavailable,
)
from service_discovery_client.models import Endpoint, Renewal

if TYPE_CHECKING:
    from service_discovery_client.client import Client

log = logging.getLogger("service_discovery_client.lease")

RETRY_SECONDS = 1.0  # after a failed renewal, the next try comes this soon (or at ttl/3)


class LeaseState:
    """What a lease keeper knows: whether it is registered, until when the lease surely holds
    (renewed at `started`, so it lapses at `started + ttl` at the earliest), and counters."""

    def __init__(self, name: str, ip: str, ttl: int, tags: Sequence[str]) -> None:
        if ttl < 1:
            raise ValueError("a lease needs a ttl of at least 1 second")
        self.name, self.ip, self.ttl, self.tags = name, ip, ttl, tuple(tags)
        self.interval = ttl / 3
        self.registered = False
        self.held_until = 0.0  # time.monotonic()
        self.expires_at: float | None = None  # the daemon's word, Unix time
        self.renewals = 0
        self.registrations = 0
        self.failures = 0

    @property
    def held(self) -> bool:
        return self.registered and time.monotonic() < self.held_until

    def next_call(self) -> Call[Any]:
        if self.registered:
            return _calls.heartbeat(self.name, self.ip)
        return _calls.register(self.name, self.ip, self.tags, self.ttl)

    @property
    def attempt_timeout(self) -> float:
        return min(self.interval, 5.0)

    def succeeded(self, started: float, result: Endpoint | Renewal) -> float:
        """Record a renewal or registration begun at `started`; seconds until the next."""
        if isinstance(result, Renewal):
            self.renewals += 1
        else:
            if self.registrations:
                log.info("registered %s in %s again (lease of %d s)", self.ip, self.name, self.ttl)
            self.registrations += 1
            self.registered = True
        self.expires_at = result.expires_at
        self.held_until = started + self.ttl
        # a little early, by a random amount: leases started together (a fleet restarting)
        # drift apart instead of renewing in one burst every ttl/3
        next_at = started + self.interval * random.uniform(0.85, 1.0)
        return max(0.0, next_at - time.monotonic())

    def failed(self, started: float, error: ServiceDiscoveryError) -> float:
        """Record a failed call begun at `started`; seconds until the next try."""
        self.failures += 1
        if self.registered and isinstance(error, NotFound | Conflict):
            log.warning(
                "lease of %s in %s is gone (%s); registering again", self.ip, self.name, error
            )
            self.registered = False
            self.held_until = 0.0
            return 0.0
        what = "renewing the lease" if self.registered else "registering"
        left = self.held_until - time.monotonic()
        still = f"held for {left:.1f} s more" if left > 0 else "not held"
        # through an outage, try again soon; a refusal (no such service, no token) will not
        # change within a second
        retry = (
            min(self.interval, RETRY_SECONDS) if isinstance(error, Unavailable) else self.interval
        )
        log.warning(
            "%s of %s in %s failed: %s; retrying in %.1f s (lease %s)",
            what, self.ip, self.name, error, retry, still,
        )  # fmt: skip
        return max(0.0, started + retry - time.monotonic())


class Lease:
    """A leased registration kept alive by a background thread (`with sd.lease(...)`).

    On entry: registers with the ttl; raises if the daemon refuses (no such service, invalid
    address, no token) but not when it is unreachable: then the thread keeps trying. While
    inside: renews every ttl/3; a lost lease (404) is registered again; failures are logged
    (logger `service_discovery_client.lease`) and retried. On exit: stops renewing and
    deregisters (errors are logged, not raised; `stop()` raises them). `held` says whether the
    lease is surely in force now.
    """

    def __init__(self, client: Client, name: str, ip: str, ttl: int, tags: Sequence[str]) -> None:
        self._client = client
        self.state = LeaseState(name, ip, ttl, tags)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.state.held

    @property
    def expires_at(self) -> float | None:
        return self.state.expires_at

    def start(self) -> Lease:
        state = self.state
        started = time.monotonic()
        try:
            delay = state.succeeded(started, self._client._run(state.next_call()))
        except Unavailable as exc:
            delay = state.failed(started, exc)
        self._thread = threading.Thread(
            target=self._keep, args=(delay,), name=f"lease {state.name}/{state.ip}", daemon=True
        )
        self._thread.start()
        return self

    def _keep(self, delay: float) -> None:
        state = self.state
        while not self._stop.wait(delay):
            started = time.monotonic()
            try:
                # one pass over the replicas, each within ttl/3: the loop is the retry
                result = self._client._run(
                    state.next_call(), rounds=1, timeout=state.attempt_timeout
                )
                delay = state.succeeded(started, result)
            except ServiceDiscoveryError as exc:
                delay = state.failed(started, exc)
            except Exception:  # a bug must not end the renewals silently
                log.exception("lease keeper of %s in %s", state.ip, state.name)
                delay = RETRY_SECONDS

    def stop(self, deregister: bool = True) -> None:
        """Stop renewing; then deregister (raising what that raises, except `NotFound`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        state = self.state
        state.registered, state.held_until = False, 0.0
        if deregister:
            try:
                self._client.deregister(state.name, state.ip)
            except NotFound:
                pass
            log.info("deregistered %s from %s", state.ip, state.name)

    def __enter__(self) -> Lease:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        except ServiceDiscoveryError as error:
            log.warning(
                "could not deregister %s from %s (%s); its lease lapses in %d s",
                self.state.ip, self.state.name, error, self.state.ttl,
            )  # fmt: skip
