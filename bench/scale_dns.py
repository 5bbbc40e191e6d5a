"""A DNS client for the scale bench: one UDP socket per server, many queries in flight on it,
answers matched by message id. Polling ten replicas at once with a socket per query (as
dns.asyncquery does) would measure the client's socket churn more than the servers.

Loopback only; every query has a timeout, every loop using it is bounded by its caller.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import dns.message
import dns.rcode
import dns.rdatatype

ZONE = "svc.cluster.local"


@dataclass(frozen=True, slots=True)
class Answer:
    sent: float  # time.monotonic() when the query left
    received: float
    rcode: int  # -1: no answer within the timeout
    addresses: frozenset[str]


class Prober(asyncio.DatagramProtocol):
    """Queries to one server over one UDP socket."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._pending: dict[int, tuple[asyncio.Future[bytes], float]] = {}
        self._next = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._wire: dict[tuple[str, str], bytes] = {}

    @classmethod
    async def open(cls, port: int) -> Prober:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(
            lambda: cls(port), remote_addr=("127.0.0.1", port)
        )
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, _addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        got = self._pending.pop(int.from_bytes(data[:2], "big"), None)
        if got is not None and not got[0].done():
            got[0].set_result(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _query(self, name: str, rdtype: str) -> bytes:
        wire = self._wire.get((name, rdtype))
        if wire is None:
            wire = dns.message.make_query(f"{name}.{ZONE}", rdtype).to_wire()
            if len(self._wire) < 200_000:
                self._wire[(name, rdtype)] = wire
        return wire

    async def ask(self, name: str, rdtype: str = "A", timeout: float = 2.0) -> Answer:
        """Ask `<name>.<zone> <rdtype>`; rcode -1 if nothing came back within `timeout`."""
        assert self._transport is not None
        for _ in range(65536):  # an id not in flight
            self._next = (self._next + 1) & 0xFFFF
            if self._next not in self._pending:
                break
        qid = self._next
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        sent = time.monotonic()
        self._pending[qid] = (future, sent)
        self._transport.sendto(qid.to_bytes(2, "big") + self._query(name, rdtype)[2:])
        try:
            data = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._pending.pop(qid, None)
            return Answer(sent, time.monotonic(), -1, frozenset())
        received = time.monotonic()
        msg = dns.message.from_wire(data)
        addresses = frozenset(
            rr.address
            for rrset in msg.answer
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
            for rr in rrset
        )
        return Answer(sent, received, msg.rcode(), addresses)


def failed(answer: Answer) -> bool:
    """No answer, or an error (SERVFAIL, REFUSED, NXDOMAIN for a name that exists)."""
    return answer.rcode != dns.rcode.NOERROR
