"""Change streams (gRPC Watch, and any streaming front-end to come): one registry subscription
fanning each change out to per-stream bounded queues, so an idle watcher costs memory, never CPU.

A stream starts with the full state of its scope (one service, or all of them), then carries
each change. Messages are built by the front-end's `Encoder` (a change or a state may take
several messages: pages), once per change and once per scope and version for a full state, and
shared by every stream that sends them: a thousand streams opened on all services between two
changes cost one snapshot. A stream that falls `queue_size` events behind is coalesced: what it
has queued is superseded by one full resend ("reload"), so a stalled reader costs bounded
memory and never loses a change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Generic, Literal, Protocol, TypeVar

from service_discovery.errors import NotReady
from service_discovery.model import Service
from service_discovery.registry import Registry

Kind = Literal["snapshot", "update", "delete", "expire", "reload"]
M = TypeVar("M")
M_co = TypeVar("M_co", covariant=True)

_KINDS: dict[str, Kind] = {"update": "update", "delete": "delete", "expire": "expire"}


class Encoder(Protocol[M_co]):
    """A front-end's messages for a stream: each call returns the messages to send in order."""

    def change(self, kind: Kind, key: str, service: Service | None, version: int) -> Sequence[M_co]:
        """One service changed (`service` None: it is gone) at registry `version`."""
        ...

    def state(self, kind: Kind, version: int, services: Sequence[Service]) -> Sequence[M_co]:
        """The full state of a stream's scope: its first message ("snapshot"), or a resend
        after a reload or an overflow ("reload")."""
        ...


class _Event(Generic[M]):
    """One change, shared by every stream that watches it; its message is built once."""

    __slots__ = ("_message", "key", "kind", "service", "version")

    def __init__(self, kind: Kind, key: str, service: Service | None, version: int) -> None:
        self.kind = kind
        self.key = key
        self.service = service
        self.version = version
        self._message: Sequence[M] | None = None

    def message(self, encoder: Encoder[M]) -> Sequence[M]:
        if self._message is None:
            self._message = encoder.change(self.kind, self.key, self.service, self.version)
        return self._message


_WAKE = object()  # queue item: look at the stream's flags (closed)
_RELOAD = object()  # queue item: the copy reloaded everything, send the scope's full state


class _Stream:
    """One open stream: a bounded queue of events, filled synchronously by the subscription."""

    __slots__ = ("closed", "key", "overflowed", "queue")

    def __init__(self, key: str | None, size: int) -> None:
        self.key = key
        self.queue: asyncio.Queue[object] = asyncio.Queue(size)
        self.overflowed = False
        self.closed = False

    def push(self, item: object) -> None:
        if self.overflowed or self.closed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # the reader is behind: what it has queued is superseded by one full resend
            self.overflowed = True

    def close(self) -> None:
        self.closed = True
        if not self.queue.full():  # a full queue already wakes the reader
            self.queue.put_nowait(_WAKE)


class ChangeFeed(Generic[M]):
    """Every open stream of one front-end, indexed by the service it watches (None: all).
    Made by `Catalog.change_feed`; `start` subscribes, `close` ends every stream."""

    def __init__(self, registry: Registry, encoder: Encoder[M], queue_size: int) -> None:
        self._registry = registry
        self._encoder = encoder
        self._queue_size = queue_size
        self._by_key: dict[str | None, set[_Stream]] = {}
        # (scope, kind) -> (registry version, messages): the full state of a scope, kept until
        # a change in the scope or a version of the registry makes it stale
        self._states: dict[tuple[str | None, Kind], tuple[int, Sequence[M]]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self.closing = False

    def start(self) -> None:
        self._unsubscribe = self._registry.subscribe(self._on_change)

    def close(self) -> None:
        """End every stream (NotReady "server draining") and refuse new ones."""
        self.closing = True
        for streams in self._by_key.values():
            for stream in streams:
                stream.close()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_change(self, key: str | None, reason: str) -> None:
        # Called synchronously inside the registry's update: cost is O(streams watching `key`).
        if key is None:
            self._states.clear()
            for streams in self._by_key.values():
                for stream in streams:
                    stream.push(_RELOAD)
            return
        self._forget(key)
        self._forget(None)  # a lapse moves no version: the states in scope are dropped by name
        watching = (*self._by_key.get(key, ()), *self._by_key.get(None, ()))
        if not watching:
            return  # no stream to tell: do not build the service's view for nobody
        registry = self._registry
        svc = registry.get(key)
        kind = _KINDS.get(reason, "update") if svc is not None else "delete"
        event: _Event[M] = _Event(kind, key, svc, registry.version)
        for stream in watching:
            stream.push(event)

    def _forget(self, key: str | None) -> None:
        self._states.pop((key, "snapshot"), None)
        self._states.pop((key, "reload"), None)

    def _state(self, key: str | None, kind: Kind) -> Sequence[M]:
        registry = self._registry
        kept = self._states.get((key, kind))
        if kept is not None and kept[0] == registry.version:
            return kept[1]
        if key is None:
            services: Sequence[Service] = registry.services()
        else:
            one = registry.get(key)
            services = (one,) if one is not None else ()
        messages = self._encoder.state(kind, registry.version, services)
        self._states[(key, kind)] = (registry.version, messages)
        return messages

    async def stream(self, name: str | None) -> AsyncIterator[M]:
        """The messages of one stream on service `name` (None: every service), until the
        client goes away or `close` (then NotReady "server draining"). NotReady before the
        copy is loaded: never an empty snapshot."""
        if self.closing:
            raise NotReady("server draining")
        if not self._registry.loaded:
            raise NotReady("the registry copy is not loaded yet")
        key = name.lower() if name else None
        stream = _Stream(key, self._queue_size)
        # registered before the snapshot is taken, with no await between: no change is missed
        self._by_key.setdefault(key, set()).add(stream)
        try:
            messages = self._state(key, "snapshot")
            while True:
                for message in messages:
                    yield message
                item = await stream.queue.get()
                if stream.closed:
                    raise NotReady("server draining")
                if stream.overflowed:
                    while not stream.queue.empty():  # superseded by the full state
                        stream.queue.get_nowait()
                    stream.overflowed = False
                    messages = self._state(key, "reload")
                elif item is _RELOAD:
                    messages = self._state(key, "reload")
                elif isinstance(item, _Event):
                    messages = item.message(self._encoder)
                else:
                    messages = ()
        finally:
            streams = self._by_key.get(key)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._by_key[key]
                    self._forget(key)  # nobody watches the scope: its state need not be kept
