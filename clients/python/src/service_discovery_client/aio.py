"""The asyncio client, on aiohttp (`pip install 'service-discovery-client[async]'`): the same
calls, policy, results and errors as `Client`, awaited; leases kept by a task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from service_discovery_client import _calls
from service_discovery_client._base import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    WATCH_WAIT,
    Attempt,
    Base,
    Failure,
    Pause,
    WatchState,
    resolve,
)
from service_discovery_client._calls import Call, Response
from service_discovery_client.errors import Conflict, NotFound, ServiceDiscoveryError, Unavailable
from service_discovery_client.lease import RETRY_SECONDS, LeaseState
from service_discovery_client.models import (
    Addresses,
    Endpoint,
    NamedPort,
    Renewal,
    Service,
    Services,
)

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("service_discovery_client.lease")

T = TypeVar("T")


class AsyncClient:
    """`Client`'s asyncio twin (same arguments, methods and results, awaited). Use it as
    `async with AsyncClient(...) as sd:` or call `await sd.close()`; the aiohttp session is
    made on first use, in the running loop. `limit`: open connections at most; waiting for a
    free one counts in a call's timeout, so a client holding many leases needs a larger one."""

    def __init__(
        self,
        addr: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        limit: int = 100,
    ) -> None:
        try:
            import aiohttp
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "AsyncClient needs aiohttp: pip install 'service-discovery-client[async]'"
            ) from exc
        self._aiohttp = aiohttp
        self._base = Base(addr, token, timeout=timeout, retries=retries)
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return repr(self._base).replace("Base", "AsyncClient", 1)

    @property
    def timeout(self) -> float:
        return self._base.timeout

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- services ------------------------------------------------------------------------------
    async def services(self) -> Services:
        return await self._run(_calls.services())

    async def service(self, name: str) -> Service:
        return await self._run(_calls.service(name))

    async def create_service(
        self,
        name: str,
        attributes: Mapping[str, str] | None = None,
        named_ports: Mapping[str, NamedPort | Mapping[str, Any]] | None = None,
        *,
        exist_ok: bool = False,
    ) -> Service:
        try:
            return await self._run(_calls.create_service(name, attributes, named_ports))
        except Conflict:
            if not exist_ok:
                raise
            return await self.service(name)

    async def delete_service(self, name: str) -> None:
        await self._run(_calls.delete_service(name))

    async def set_ports(
        self, name: str, ports: Mapping[str, NamedPort | Mapping[str, Any]]
    ) -> dict[str, NamedPort]:
        return await self._run(_calls.set_ports(name, ports))

    # ---- endpoints -----------------------------------------------------------------------------
    async def endpoints(self, name: str) -> list[Endpoint]:
        return await self._run(_calls.endpoints(name))

    async def register(
        self, name: str, ip: str, tags: Sequence[str] = (), ttl: int | None = None
    ) -> Endpoint:
        return await self._run(_calls.register(name, ip, tags, ttl))

    async def deregister(self, name: str, ip: str) -> None:
        await self._run(_calls.deregister(name, ip))

    async def heartbeat(self, name: str, ip: str) -> Renewal:
        return await self._run(_calls.heartbeat(name, ip))

    def lease(self, name: str, ip: str, ttl: int = 10, tags: Sequence[str] = ()) -> AsyncLease:
        """`async with sd.lease(...)`: as `Client.lease`, renewed by a task of this loop."""
        return AsyncLease(self, name, ip, ttl, tags)

    # ---- reads built on the others -------------------------------------------------------------
    async def resolve(self, name: str, port_name: str) -> Addresses:
        return resolve(await self.service(name), port_name)

    @overload
    def watch(self, name: None = None, *, wait: float = WATCH_WAIT) -> AsyncIterator[Services]: ...
    @overload
    def watch(self, name: str, *, wait: float = WATCH_WAIT) -> AsyncIterator[Service | None]: ...
    async def watch(
        self, name: str | None = None, *, wait: float = WATCH_WAIT
    ) -> AsyncIterator[Any]:
        """`async for svc in sd.watch(name)`: as `Client.watch`."""
        state = WatchState(name, wait)
        while True:
            try:
                index, value = await self._run(state.call())
            except Unavailable as exc:
                await asyncio.sleep(state.failed(exc))
                continue
            if state.update(index, value):
                yield value

    # ---- driving the policy --------------------------------------------------------------------
    async def _run(
        self, call: Call[T], *, rounds: int | None = None, timeout: float | None = None
    ) -> T:
        plan = self._base._plan(call, rounds=rounds, timeout=timeout)
        outcome: Response | Failure | None = None
        while True:
            try:
                step = plan.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                outcome = None
            else:
                outcome = await self._attempt(step)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = self._aiohttp.TCPConnector(limit=self._limit)
            self._session = self._aiohttp.ClientSession(connector=connector)
        return self._session

    async def _attempt(self, step: Attempt) -> Response | Failure:
        aiohttp = self._aiohttp
        url = f"{step.target.scheme}://{step.target.host}:{step.target.port}{step.path}"
        timeout = aiohttp.ClientTimeout(total=step.timeout)
        try:
            async with self._http().request(
                step.method, url, data=step.body, headers=step.headers, timeout=timeout
            ) as resp:
                body = await resp.read()
                headers = {k.lower(): v for k, v in resp.headers.items()}
                return Response(resp.status, headers, body, step.target.url)
        except aiohttp.ClientConnectorError as exc:
            # nothing was sent (refused, unreachable, a name that does not resolve)
            reason = (
                "connection refused"
                if isinstance(exc.os_error, ConnectionRefusedError)
                else str(exc)
            )
            return Failure(False, reason)
        except TimeoutError:
            return Failure(True, f"no answer within {step.timeout:g} s")
        except aiohttp.ClientError as exc:
            return Failure(True, str(exc) or type(exc).__name__)


class AsyncLease:
    """`async with sd.lease(...)`: `Lease` for asyncio, renewed by a task instead of a thread."""

    def __init__(
        self, client: AsyncClient, name: str, ip: str, ttl: int, tags: Sequence[str]
    ) -> None:
        self._client = client
        self.state = LeaseState(name, ip, ttl, tags)
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self.state.held

    @property
    def expires_at(self) -> float | None:
        return self.state.expires_at

    async def start(self) -> AsyncLease:
        state = self.state
        started = time.monotonic()
        try:
            delay = state.succeeded(started, await self._client._run(state.next_call()))
        except Unavailable as exc:
            delay = state.failed(started, exc)
        self._task = asyncio.create_task(self._keep(delay), name=f"lease {state.name}/{state.ip}")
        return self

    async def _keep(self, delay: float) -> None:
        state = self.state
        while True:
            await asyncio.sleep(delay)
            started = time.monotonic()
            try:
                result = await self._client._run(
                    state.next_call(), rounds=1, timeout=state.attempt_timeout
                )
                delay = state.succeeded(started, result)
            except ServiceDiscoveryError as exc:
                delay = state.failed(started, exc)
            except Exception:  # a bug must not end the renewals silently
                log.exception("lease keeper of %s in %s", state.ip, state.name)
                delay = RETRY_SECONDS

    async def stop(self, deregister: bool = True) -> None:
        """Stop renewing; then deregister (raising what that raises, except `NotFound`)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        state = self.state
        state.registered, state.held_until = False, 0.0
        if deregister:
            with contextlib.suppress(NotFound):
                await self._client.deregister(state.name, state.ip)
            log.info("deregistered %s from %s", state.ip, state.name)

    async def __aenter__(self) -> AsyncLease:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.stop()
        except ServiceDiscoveryError as error:
            log.warning(
                "could not deregister %s from %s (%s); its lease lapses in %d s",
                self.state.ip, self.state.name, error, self.state.ttl,
            )  # fmt: skip
