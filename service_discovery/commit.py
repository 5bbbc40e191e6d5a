"""Group commit: every write of this replica (create and delete a service, add ports, register,
deregister, bulk registration) is written here, in batches.

A write that arrives while no batch is being written starts one at once, so a lone write waits
for nothing. Writes that arrive while a batch is being written queue, and when it has committed
they all go together as the next batch (up to SD_WRITE_BATCH_MAX): one statement, one
transaction, one update of the registry version and as few NOTIFYs as fit. So batches grow with
the load by themselves, and PostgreSQL's commit-time costs (the flush, the database-wide lock a
notifying transaction holds until its commit is flushed) are paid once per batch, not once per
write. One batch at a time, in arrival order: writes to one service apply in the order they
came. (Two batches in flight were tried: they do not commit faster, since notifying
transactions commit one at a time anyway, and they halve the batches.)

Each write keeps its own outcome (`Store.write_batch`); a batch that fails as a whole for
anything but an unreachable database is written again one write at a time, so a bad write fails
alone. A caller is answered after its batch committed (durability is the database's, as
before) and this replica's copy shows its write (read-your-writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass

from service_discovery.config import Config
from service_discovery.errors import StoreUnavailable
from service_discovery.metrics import Metrics
from service_discovery.model import EndpointChange
from service_discovery.registry import Registry
from service_discovery.store import Store
from service_discovery.writes import Committed, Write, weight

log = logging.getLogger(__name__)

_CATCH_UP_SECONDS = 0.5  # how long a write waits for earlier changes before reading its service

Outcome = Committed | BaseException


# Writes waiting for a batch at most (each holds a request); beyond, a write answers 503 at once.
# As the heartbeats' MAX_BATCH (leases.py): a bound on memory, far above what a replica writes.
MAX_WAITING = 10_000


@dataclass(slots=True)
class _Pending:
    write: Write
    future: asyncio.Future[Committed]
    weight: int


class GroupCommit:
    """Owns the queue of writes, the batch in flight, and the callers' answers."""

    def __init__(self, config: Config, store: Store, registry: Registry, metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._in_flight = 0  # writes of the batch being written
        self._catching_up: set[asyncio.Task[None]] = set()
        self._stopping = False
        metrics.write_waiting.set_function(lambda: len(self._queue) + self._in_flight)

    async def submit(self, write: Write) -> Committed:
        """Write `write` with the next batch; returns once it is committed and this replica's
        copy shows it. Raises the write's own error (NotFound, AlreadyExists, LimitExceeded,
        ...) or StoreUnavailable (its batch could not be written, or too many writes wait).

        A caller that goes away while its write waits for a batch withdraws it; once its batch
        is being written, the write happens (and the copy shows it) without it.
        """
        if self._stopping:
            raise StoreUnavailable("the server is shutting down")
        if len(self._queue) >= MAX_WAITING:
            self._metrics.store_errors.inc()
            raise StoreUnavailable(f"{MAX_WAITING} writes are waiting for the database; retry")
        loop = asyncio.get_running_loop()
        pending = _Pending(write, loop.create_future(), weight(write))
        self._queue.append(pending)
        if self._runner is None:
            # It runs at the next turn of the loop: the writes that arrive in this one (requests
            # read from the same socket buffer) go with this one.
            self._runner = loop.create_task(self._run(), name="sd-group-commit")
        return await pending.future

    async def stop(self, timeout: float) -> None:
        """Refuse new writes, give the batch in flight and the writes queued behind it
        `timeout` seconds, then cancel what is left (its callers get StoreUnavailable)."""
        self._stopping = True
        tasks = [t for t in (self._runner, *self._catching_up) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        self._fail_queued(StoreUnavailable("the server is shutting down"))
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- batches -------------------------------------------------------------------------
    async def _run(self) -> None:
        """Write batches until the queue is empty: each one holds what queued while the
        previous one was being written."""
        try:
            while self._queue:
                batch = self._take()
                if batch:
                    await self._write(batch)
        finally:
            self._runner = None

    def _take(self) -> list[_Pending]:
        """The next batch: queued writes in arrival order, up to SD_WRITE_BATCH_MAX (at least
        one write, whatever its weight). Writes whose caller went away are dropped unwritten."""
        batch: list[_Pending] = []
        total = 0
        limit = self._config.write_batch_max
        while self._queue:
            pending = self._queue[0]
            if pending.future.done():
                self._queue.popleft()
                continue
            if batch and total + pending.weight > limit:
                break
            self._queue.popleft()
            batch.append(pending)
            total += pending.weight
        return batch

    async def _write(self, batch: list[_Pending]) -> None:
        writes = [p.write for p in batch]
        started = time.perf_counter()
        outcomes: list[Outcome]
        self._in_flight = len(batch)
        try:
            try:
                outcomes = list(await self._store.write_batch(writes))
            except StoreUnavailable as exc:
                # The database is away: this batch failed, and so would the writes queued
                # behind it; answer them all now rather than one timeout later each.
                self._fail(batch, exc)
                self._fail_queued(exc)
                return
            except Exception as exc:
                if len(batch) == 1:
                    outcomes = [exc]
                else:
                    outcomes = await self._one_by_one(batch, exc)
        except asyncio.CancelledError:
            self._fail(batch, StoreUnavailable("the server is shutting down"))
            raise
        finally:
            self._in_flight = 0
        self._metrics.write_commit_latency.observe(time.perf_counter() - started)
        self._metrics.write_batch_size.observe(len(batch))
        self._settle(batch, outcomes)

    async def _one_by_one(self, batch: list[_Pending], exc: Exception) -> list[Outcome]:
        """The batch failed as a whole (a constraint the model did not catch, a deadlock):
        nothing of it was written. Write each write alone, in order, for its own outcome."""
        log.warning(
            "a batch of %d writes failed as a whole (%s: %s); writing them one at a time",
            len(batch),
            type(exc).__name__,
            exc,
        )
        self._metrics.write_batch_retries.inc()
        outcomes: list[Outcome] = []
        for pending in batch:
            try:
                outcomes.extend(await self._store.write_batch([pending.write]))
            except StoreUnavailable as lost:
                outcomes.extend(StoreUnavailable(lost.message) for _ in batch[len(outcomes) :])
                break
            except Exception as failed:
                outcomes.append(failed)
        return outcomes

    # ---- answers -------------------------------------------------------------------------
    def _settle(self, batch: list[_Pending], outcomes: list[Outcome]) -> None:
        """Apply the committed writes to this replica's copy in order and answer their
        callers; failed writes get their own error. A service whose copy missed an earlier
        change is caught up in the background, and its callers answered then."""
        behind: dict[str, list[tuple[_Pending, Committed]]] = {}
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, StoreUnavailable):
                    self._metrics.store_errors.inc()
                _set_exception(pending.future, outcome)
            elif outcome.service in behind or not self._apply(outcome):
                behind.setdefault(outcome.service, []).append((pending, outcome))
            else:
                _set_result(pending.future, outcome)
        for key, waiting in behind.items():
            task = asyncio.get_running_loop().create_task(
                self._catch_up(key, waiting), name="sd-commit-catch-up"
            )
            self._catching_up.add(task)
            task.add_done_callback(self._catching_up.discard)

    def _apply(self, done: Committed) -> bool:
        """Apply a committed write to the copy; False if the copy does not hold the version
        just before it (it missed a change in between, which is on its way)."""
        registry = self._registry
        if registry.index(done.service) >= done.version:
            registry.own(done.version)
            return True  # already there (a later whole read, or our notification)
        if done.whole:
            registry.apply(done.version, done.service, done.state, own=done.version)
            return True
        ((ip, endpoint),) = done.endpoints  # a write of one endpoint (a bulk one is whole)
        change = EndpointChange(done.service, done.version, done.prev_version, ip, endpoint)
        return registry.apply_endpoint(change, own=True)

    async def _catch_up(self, key: str, waiting: list[tuple[_Pending, Committed]]) -> None:
        """The copy of `key` missed a change committed just before ours (another replica's, on
        its way through LISTEN, or the reaper's). Those arrive within milliseconds and in
        order, so wait for them briefly, applying ours as soon as they continue the copy; only
        a copy that stays behind is fixed by reading the service."""
        registry = self._registry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CATCH_UP_SECONDS
        try:
            while waiting:
                while waiting and self._apply(waiting[0][1]):
                    pending, done = waiting.pop(0)
                    _set_result(pending.future, done)
                if not waiting:
                    return
                remaining = deadline - loop.time()
                if remaining <= 0 or registry.closed or registry.get(key) is None:
                    snapshot = await self._store.snapshot([key])
                    for _, done in waiting:  # the read holds them all
                        registry.own(done.version)
                    registry.apply(snapshot.version, key, snapshot.services.get(key))
                    for pending, done in waiting:
                        _set_result(pending.future, done)
                    return
                await registry.wait_for_change(key, registry.index(key), remaining)
        except StoreUnavailable as exc:
            self._fail([p for p, _ in waiting], exc)
        except asyncio.CancelledError:
            self._fail([p for p, _ in waiting], StoreUnavailable("the server is shutting down"))
            raise

    def _fail(self, batch: list[_Pending], exc: StoreUnavailable) -> None:
        # A fresh exception per caller: one shared instance would collect every caller's
        # traceback as each of them re-raises it.
        for pending in batch:
            if not pending.future.done():
                self._metrics.store_errors.inc()
                _set_exception(pending.future, type(exc)(exc.message))

    def _fail_queued(self, exc: StoreUnavailable) -> None:
        queued = list(self._queue)
        self._queue.clear()
        self._fail(queued, exc)


def _set_result(future: asyncio.Future[Committed], done: Committed) -> None:
    if not future.done():
        future.set_result(done)


def _set_exception(future: asyncio.Future[Committed], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: a caller that went away must not log a warning
