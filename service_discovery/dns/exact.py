"""Answers to UDP datagrams seen before, by the datagram's bytes after the id.

A datagram's bytes after the id decide all that its answer depends on: the question, EDNS, the
payload size (a query with a cookie, whose answer depends on the sender too, is never kept). So
a datagram seen before is answered without being parsed again: the id, then the next of its
answer's whole responses (`EncodedAnswer.responses`, which rotate), counted in the answer's
query cell. `handler` keeps one on a cache hit and clears them all on every change; the UDP
listener (`udp`) reads them directly while RRL is off (RRL must see every datagram).
"""

from __future__ import annotations

from collections.abc import Iterator

SIZE = 10_000  # datagrams kept; all forgotten when there are more


class ExactAnswers(dict[bytes, tuple[list[int], Iterator[bytes]]]):
    """datagram after its id -> (the query cell to count in, the answer's responses)."""

    __slots__ = ()

    def keep(self, datagram_after_id: bytes, cell: list[int], responses: Iterator[bytes]) -> None:
        if len(self) >= SIZE:
            self.clear()
        self[datagram_after_id] = (cell, responses)
