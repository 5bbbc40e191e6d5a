"""The DNS wire codec: parsing what the fast path does not, and encoding answers once.

This module owns the byte layouts: the full parse of a question and of the additional section
(EDNS0's OPT record), our OPT record, error responses, and `EncodedAnswer`, an answer encoded
once with name compression and kept in the forms that fit smaller size limits (RFC 2181 9
truncation). The hot path that splices a cached answer into a response lives in `handler`,
inlined for speed; it relies on the layout documented on `EncodedAnswer`.

dnslib is not used, not even off the fast path: every path it could take is one that traffic
can hit at will. Measured (dnslib 0.9.26, one core): parsing a query takes it 25 us, while a
cached answer to a mixed-case (0x20) query, which takes the full parse here, costs 5 us in all;
packing an NXDOMAIN takes it 20 us, more than our whole NXDOMAIN miss (17 us: parse, resolve,
encode, keep), which is what a flood of random names costs; A and SRV answers take it 29-41 us.
The tests decode answers with dnspython, dig and (once) dnslib, independently of this encoder.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

from service_discovery.dns.cookies import COOKIE
from service_discovery.dns.records import (
    AAAA,
    NS,
    OPT,
    PTR,
    A,
    Answer,
    Name,
    Record,
    Soa,
    Srv,
    Txt,
)

UDP_PLAIN_LIMIT = 512  # RFC 1035 4.2.1: without EDNS0 a UDP answer is at most 512 bytes
TCP_LIMIT = 65535  # the 2-byte length prefix of DNS over TCP
ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0

_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_SOA_TAIL = struct.Struct("!IIIII")
_SRV_HEAD = struct.Struct("!HHH")
COUNTS = struct.Struct("!HHHH")  # QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT
_FAMILY = {A: socket.AF_INET, AAAA: socket.AF_INET6}


class Form(NamedTuple):
    """A smaller form of an answer (see `EncodedAnswer.smaller`)."""

    size: int  # of the whole response
    hdr: tuple[bytes, bytes]  # flags and counts, for RD clear and RD set
    tail: bytes  # everything after the question
    truncated: bool  # TC set: the answer did not fit, so no records at all


def opt(udp_size: int, extended_rcode: int = 0) -> bytes:
    """Our OPT record: root owner, our UDP payload size, version 0, no flags or options."""
    return b"\x00" + _RR_FIXED.pack(OPT, udp_size, (extended_rcode >> 4) << 24, 0)


def header_pair(flags: tuple[int, int], counts: tuple[int, int, int]) -> tuple[bytes, bytes]:
    """Flags and counts after the transaction id, for RD clear and RD set (the client's)."""
    packed = COUNTS.pack(1, *counts)
    return (bytes(flags) + packed, bytes((flags[0] | 1, flags[1])) + packed)


# ---- parsing ---------------------------------------------------------------------------------
def question_end(data: bytes) -> int:
    """The offset just past the one question (name, type, class), or 0 if it is malformed.

    The name is walked label by label; compression pointers are not allowed in a question.
    """
    i = 12
    try:
        length = data[i]
        while length:
            if length > 63:
                return 0
            i += length + 1
            length = data[i]
    except IndexError:
        return 0
    qend = i + 5
    if qend > len(data) or i - 11 > 255:
        return 0
    return qend


class Edns(NamedTuple):
    """What a query's OPT record says: EDNS version (-1: no OPT record), UDP payload size, and
    the data of its COOKIE option (None: none)."""

    version: int
    payload: int
    cookie: bytes | None = None


NO_EDNS = Edns(-1, 0)


def parse_additional(data: bytes, offset: int) -> Edns | None:
    """Find the OPT record among the additional records (NO_EDNS without one), or None if the
    section is malformed or has two OPT records."""
    count = data[10] << 8 | data[11]
    found: Edns | None = None
    size = len(data)
    for _ in range(count):
        # Owner name: labels, possibly ending in a compression pointer.
        while True:
            if offset >= size:
                return None
            length = data[offset]
            if length >= 0xC0:
                offset += 2
                break
            if length > 63:
                return None
            offset += length + 1
            if length == 0:
                break
        if offset + 10 > size:
            return None
        rtype = data[offset] << 8 | data[offset + 1]
        rdlen = data[offset + 8] << 8 | data[offset + 9]
        if rtype == OPT:
            if found is not None or data[offset - 1] != 0:
                return None  # RFC 6891 6.1.1: one OPT, owned by the root
            cookie = _option(data, offset + 10, min(offset + 10 + rdlen, size), COOKIE)
            found = Edns(data[offset + 5], data[offset + 2] << 8 | data[offset + 3], cookie)
        offset += 10 + rdlen
        if offset > size:
            return None
    return found if found is not None else NO_EDNS


def _option(data: bytes, at: int, end: int, code: int) -> bytes | None:
    """The data of the first EDNS option `code` in data[at:end] (an OPT record's RDATA)."""
    while at + 4 <= end:
        length = data[at + 2] << 8 | data[at + 3]
        if data[at] << 8 | data[at + 1] == code:
            return data[at + 4 : at + 4 + length] if at + 4 + length <= end else None
        at += 4 + length
    return None


def opt_with(our_opt: bytes, option: bytes) -> bytes:
    """Our OPT record (`opt`) carrying one option (code, length and data, packed)."""
    return our_opt[:-2] + len(option).to_bytes(2, "big") + option


def split_labels(qwire: bytes) -> Name:
    """A parsed name's wire bytes (ending in its zero byte) as a tuple of labels."""
    text = qwire.decode("latin-1")  # one decode, then slices: labels may hold any byte
    labels: list[str] = []
    at = 0
    length = qwire[0]
    while length:
        labels.append(text[at + 1 : at + 1 + length])
        at += length + 1
        length = qwire[at]
    return tuple(labels)


# ---- encoding --------------------------------------------------------------------------------
def error_response(
    data: bytes, rcode: int, qend: int | None, our_opt: bytes, truncated: bool = False
) -> bytes:
    """An answer without records: the question echoed if it parsed, `our_opt` if EDNS0, TC
    set if `truncated`."""
    flags = bytes((0x80 | (data[2] & 0x79) | (0x02 if truncated else 0), rcode & 0xF))
    counts = COUNTS.pack(1 if qend else 0, 0, 0, 1 if our_opt else 0)
    question = data[12:qend] if qend else b""
    return data[:2] + flags + counts + question + our_opt


class Writer:
    """Encodes records after a header and question of known size, compressing names.

    The question is not written (each response splices in the client's own question, with its
    case), but its name's suffixes are compression targets at their real offsets, so owner
    names become two-byte pointers into it. Only the bytes after the question are in `buf`.
    """

    __slots__ = ("base", "buf", "names", "qname", "qwire")

    def __init__(self, qname: Name, qwire: bytes, question_len: int, buf: bytearray) -> None:
        self.qname = qname
        self.qwire = qwire  # the question's name as lowercase wire bytes
        self.base = 12 + question_len  # message offset of buf[0]
        self.buf = buf
        self.names: dict[Name, int] = {}  # names written into buf, for later pointers

    def _in_question(self, name: Name) -> int:
        """The message offset of `name` if it is the question's name or a suffix of it, or 0."""
        qname = self.qname
        skip = len(qname) - len(name)
        if skip < 0 or qname[skip:] != name:
            return 0
        return 12 + skip + sum(map(len, qname[:skip]))

    def name(self, name: Name, compress: bool = True) -> None:
        buf = self.buf
        if name is self.qname:
            at = 12
        else:
            at = self._in_question(name)
        if at:
            if compress:
                buf += (0xC000 | at).to_bytes(2, "big")
            else:
                buf += self.qwire[at - 12 :]
            return
        names = self.names
        for i in range(len(name)):
            suffix = name[i:]
            if compress:
                at = names.get(suffix) or self._in_question(suffix)
                if at:
                    buf += (0xC000 | at).to_bytes(2, "big")
                    return
            offset = self.base + len(buf)
            if offset < 0x3FFF:
                names.setdefault(suffix, offset)
            label = name[i].encode("latin-1")
            buf.append(len(label))
            buf += label
        buf.append(0)

    def record(self, r: Record) -> None:
        """Any record but A and AAAA (which `EncodedAnswer` writes as RRsets)."""
        buf = self.buf
        rtype = r.rtype
        self.name(r.name)
        at = len(buf) + 8
        buf += _RR_FIXED.pack(rtype, 1, r.ttl, 0)
        data = r.rdata
        if isinstance(data, Srv):
            buf += _SRV_HEAD.pack(data.priority, data.weight, data.port)
            self.name(data.target, compress=False)  # RFC 2782: no compression in SRV targets
        elif isinstance(data, Soa):
            self.name(data.mname)
            self.name(data.rname)
            buf += _SOA_TAIL.pack(data.serial, data.refresh, data.retry, data.expire, data.minimum)
        elif isinstance(data, Txt):
            for string in data.strings:  # each at most 255 bytes (the resolver splits them)
                buf.append(len(string))
                buf += string
        elif (rtype == NS or rtype == PTR) and not isinstance(data, str):
            self.name(data)
        else:  # pragma: no cover - the resolver makes no other types
            raise ValueError(f"cannot encode record type {rtype}")
        struct.pack_into("!H", buf, at, len(buf) - at - 2)


class EncodedAnswer:
    """One encoded answer, minus the transaction id, RD bit and question the client sends.

    `tail` is everything after the question: answer, authority, additional, then our OPT
    record if the query had one. If the answer is one A or AAAA RRset of `n` equal records of
    `rr` bytes each, responses rotate it (`turn`). `cells` are the query counters (udp, tcp)
    that each response from this answer adds one to.
    """

    __slots__ = (
        "alternatives",
        "an_end",
        "cells",
        "counts",
        "depends_on",
        "fast",
        "flags",
        "hdr",
        "n",
        "ns_end",
        "opt",
        "qlen",
        "rr",
        "size",
        "tail",
        "turn",
    )

    def __init__(self, answer: Answer, qname: Name, qwire: bytes, qlen: int, opt: bytes) -> None:
        records, authority, additional = answer.answer, answer.authority, answer.additional
        w: Writer | None = None  # needed only for names other than the question's own
        buf = bytearray()
        ends = []
        last_name: Name | None = None
        last_type = 0
        head = b""
        for section in (records, authority, additional):
            for r in section:
                rtype = r.rtype
                if rtype == A or rtype == AAAA:
                    # An address RRset: owner, type, class, TTL and length once, then each
                    # record is that head and the address.
                    owner = r.name
                    if owner is not last_name or rtype != last_type:
                        fixed = _RR_FIXED.pack(rtype, 1, r.ttl, 4 if rtype == A else 16)
                        if owner is qname:
                            head = b"\xc0\x0c" + fixed
                            buf += head
                        else:
                            if w is None:
                                w = Writer(qname, qwire, qlen, buf)
                            start = len(buf)
                            w.name(owner)
                            head = bytes(buf[start:]) + fixed
                            buf += fixed
                        last_name, last_type = owner, rtype
                    else:
                        buf += head
                    ip = r.rdata
                    if not isinstance(ip, str):  # pragma: no cover - the resolver writes text
                        raise TypeError(f"address record without an address: {r}")
                    buf += socket.inet_pton(_FAMILY[rtype], ip)
                else:
                    if w is None:
                        w = Writer(qname, qwire, qlen, buf)
                    w.record(r)
                    last_name = None
            ends.append(len(buf))
        buf += opt
        an, ns, ad = len(records), len(authority), len(additional)
        self.flags = (0x84 if answer.authoritative else 0x80, answer.rcode & 0xF)
        self.counts = (an, ns, ad + (1 if opt else 0))
        self.hdr = header_pair(self.flags, self.counts)
        self.tail = tail = bytes(buf)
        self.qlen = qlen
        self.size = 12 + qlen + len(tail)
        self.opt = opt
        self.an_end, self.ns_end, _ = ends  # where the answer and authority sections end
        self.depends_on = answer.depends_on
        self.turn = 0
        if an > 1 and (records[0].rtype == A or records[0].rtype == AAAA):
            self.n = an
            self.rr = self.an_end // an  # one RRset of one type: all records are one size
        else:
            self.n = self.rr = 0
        # Forms to fall back on when `size` does not fit; built on need.
        self.alternatives: list[Form] | None = None
        self.cells: tuple[list[int], list[int]] = ([0], [0])
        # The handler's whole responses for its fast path, by RD bit (built there on need).
        self.fast: list[Iterator[bytes] | None] | None = None

    def within(self, room: int) -> tuple[int, bytes]:
        """As many whole answer records as fit `room` bytes, and how many: rotated when they are
        one address RRset, else the first ones (names point only to what comes before)."""
        tail, rr, n, at, keep = self.tail, self.rr, self.n, 0, 0
        if n:
            keep, self.turn = min(room // rr, n), (self.turn + 1) % n
            return keep, (tail[self.turn * rr : self.an_end] + tail[: self.turn * rr])[: keep * rr]
        while keep < self.counts[0] and (end := _record_end(tail, at)) <= room:
            at, keep = end, keep + 1
        return keep, tail[:at]

    def smaller(self) -> list[Form]:
        """Forms that fit smaller limits, largest first. RFC 2181 9: leaving additional records
        out is not truncation; TC only when the answer or authority section does not fit, and
        then no partial RRsets: no records at all."""
        if self.alternatives is None:
            an, ns, ad_opt = self.counts
            has_opt = 1 if self.opt else 0
            alts = []
            if ad_opt > has_opt:
                no_additional = self.tail[: self.ns_end] + self.opt
                hdr = header_pair(self.flags, (an, ns, has_opt))
                size = 12 + self.qlen + len(no_additional)
                alts.append(Form(size, hdr, no_additional, False))
            tc = (self.flags[0] | 2, self.flags[1])
            hdr = header_pair(tc, (0, 0, has_opt))
            alts.append(Form(12 + self.qlen + len(self.opt), hdr, self.opt, True))
            self.alternatives = alts
        return self.alternatives

    def responses(self, question: bytes, rd: int) -> Iterator[bytes]:
        """Every whole response but the id to `question` with RD bit `rd`, in rotation order
        (from the turn after the current one), as one endless cycle; for a question that is
        this answer's cache key's very bytes (the handler's fast path)."""
        tail, n, rr, end = self.tail, self.n, self.rr, self.an_end
        head = self.hdr[rd] + question
        if not n:
            return itertools.repeat(head + tail)
        turns = [(self.turn + 1 + k) % n for k in range(n)]
        return itertools.cycle(
            [head + tail[t * rr : end] + tail[: t * rr] + tail[end:] for t in turns]
        )


def _record_end(data: bytes, at: int) -> int:
    """Where the record at `at` ends: its owner's labels to a zero byte or a pointer, type,
    class, TTL, length, data."""
    while data[at] and data[at] < 0xC0:
        at += 1 + data[at]
    at += 2 if data[at] else 1
    return at + 10 + (data[at + 8] << 8 | data[at + 9])
