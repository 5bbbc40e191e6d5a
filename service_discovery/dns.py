"""The DNS front-end: UDP and TCP listeners on DNS_PORT answering from the registry copy.

This module owns the wire format: parsing the header and question by hand on the hot path,
encoding answers (with name compression), EDNS0 and truncation, and the cache of encoded
answers with its invalidation. It also owns TCP connection handling and the DNS metrics.
What a name answers is decided by the pure `resolver.resolve`; nothing here touches the
database.

dnslib is not used here: measured on this project's hardware it needs 125-335 us to build one
answer and 110 us to parse one query, which would cap a cache miss near 5,000 queries/s. The
tests decode every answer with dnspython and dig instead, independently of this encoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable

from service_discovery.config import Config
from service_discovery.metrics import Metrics
from service_discovery.registry import Registry
from service_discovery.resolver import (
    AAAA,
    BADVERS,
    FORMERR,
    NOTIMP,
    NS,
    OPT,
    PTR,
    RCODE_NAMES,
    SERVFAIL,
    TYPE_NAMES,
    A,
    Answer,
    Name,
    Question,
    Record,
    Soa,
    Srv,
    ZoneView,
    resolve,
)

log = logging.getLogger(__name__)

UDP_PLAIN_LIMIT = 512  # RFC 1035 4.2.1: without EDNS0 a UDP answer is at most 512 bytes
TCP_LIMIT = 65535  # the 2-byte length prefix of DNS over TCP
_METRICS_FLUSH_SECONDS = 1.0
_BIND_ATTEMPTS = 50
_UDP_RCVBUF = 4 * 1024 * 1024  # absorb bursts; the kernel caps it at net.core.rmem_max

_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_SOA_TAIL = struct.Struct("!IIIII")
_SRV_HEAD = struct.Struct("!HHH")
_COUNTS = struct.Struct("!HHHH")
_FAMILY = {A: socket.AF_INET, AAAA: socket.AF_INET6}
_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0


def _opt(udp_size: int, extended_rcode: int = 0) -> bytes:
    """Our OPT record: root owner, our UDP payload size, version 0, no flags or options."""
    return b"\x00" + _RR_FIXED.pack(OPT, udp_size, (extended_rcode >> 4) << 24, 0)


class _Writer:
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
        """Any record but A and AAAA (which `_Entry` writes as RRsets)."""
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
        elif rtype == NS or rtype == PTR:
            self.name(data)  # type: ignore[arg-type]
        else:  # pragma: no cover - the resolver makes no other types
            raise ValueError(f"cannot encode record type {rtype}")
        struct.pack_into("!H", buf, at, len(buf) - at - 2)


class _Entry:
    """One encoded answer, minus the transaction id, RD bit and question the client sends.

    `tail` is everything after the question: answer, authority, additional, then our OPT
    record if the query had one. If the answer is one A or AAAA RRset of `n` equal records of
    `rr` bytes each, responses rotate it (`turn`).
    """

    __slots__ = (
        "alternatives",
        "an_end",
        "cells",
        "counts",
        "depends_on",
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
        records, authority, additional = answer[2], answer[3], answer[4]
        w: _Writer | None = None  # needed only for names other than the question's own
        buf = bytearray()
        ends = []
        last_name: Name | None = None
        last_type = 0
        head = b""
        for section in (records, authority, additional):
            for r in section:
                rtype = r[1]
                if rtype == A or rtype == AAAA:
                    # An address RRset: owner, type, class, TTL and length once, then each
                    # record is that head and the address.
                    if r[0] is not last_name or rtype != last_type:
                        fixed = _RR_FIXED.pack(rtype, 1, r[2], 4 if rtype == A else 16)
                        if r[0] is qname:
                            head = b"\xc0\x0c" + fixed
                            buf += head
                        else:
                            if w is None:
                                w = _Writer(qname, qwire, qlen, buf)
                            start = len(buf)
                            w.name(r[0])
                            head = bytes(buf[start:]) + fixed
                            buf += fixed
                        last_name, last_type = r[0], rtype
                    else:
                        buf += head
                    buf += socket.inet_pton(_FAMILY[rtype], r[3])  # type: ignore[arg-type]
                else:
                    if w is None:
                        w = _Writer(qname, qwire, qlen, buf)
                    w.record(r)
                    last_name = None
            ends.append(len(buf))
        buf += opt
        an, ns, ad = len(records), len(authority), len(additional)
        self.flags = (0x84 if answer[1] else 0x80, answer[0] & 0xF)
        self.counts = (an, ns, ad + (1 if opt else 0))
        self.hdr = _header_pair(self.flags, self.counts)
        self.tail = tail = bytes(buf)
        self.qlen = qlen
        self.size = 12 + qlen + len(tail)
        self.opt = opt
        self.an_end = ends[0]
        self.ns_end = ends[1]
        self.depends_on = answer[5]
        self.turn = 0
        if an > 1 and (records[0][1] == A or records[0][1] == AAAA):
            self.n = an
            self.rr = ends[0] // an  # one RRset of one type: every record has the same size
        else:
            self.n = self.rr = 0
        # (size, header pair, tail) to fall back on when `size` does not fit; built on need.
        self.alternatives: list[tuple[int, tuple[bytes, bytes], bytes]] | None = None
        self.cells: tuple[list[int], list[int]] = ([0], [0])

    def smaller(self) -> list[tuple[int, tuple[bytes, bytes], bytes]]:
        """Forms that fit smaller limits, largest first. RFC 2181 9: leaving additional records
        out is not truncation; TC only when the answer or authority section does not fit, and
        then no partial RRsets: no records at all."""
        if self.alternatives is None:
            an, ns, ad_opt = self.counts
            has_opt = 1 if self.opt else 0
            alts = []
            if ad_opt > has_opt:
                no_additional = self.tail[: self.ns_end] + self.opt
                hdr = _header_pair(self.flags, (an, ns, has_opt))
                alts.append((12 + self.qlen + len(no_additional), hdr, no_additional))
            tc = (self.flags[0] | 2, self.flags[1])
            alts.append(
                (12 + self.qlen + len(self.opt), _header_pair(tc, (0, 0, has_opt)), self.opt)
            )
            self.alternatives = alts
        return self.alternatives


def _header_pair(flags: tuple[int, int], counts: tuple[int, int, int]) -> tuple[bytes, bytes]:
    """Flags and counts after the transaction id, for RD clear and RD set (the client's)."""
    packed = _COUNTS.pack(1, *counts)
    return (bytes(flags) + packed, bytes((flags[0] | 1, flags[1])) + packed)


class DnsServer:
    """Serves the zone over UDP and TCP on one port; see the module docstring."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        metrics: Metrics,
        *,
        invalidate_every_query: bool = False,
    ) -> None:
        self._config = config
        self._registry = registry
        self._metrics = metrics
        self._view = ZoneView(registry)
        # Benchmark mode: drop every cached answer before each query, so each one is a miss.
        self.invalidate_every_query = invalidate_every_query
        self._max_udp = config.dns_max_udp_size
        self._opt = _opt(config.dns_max_udp_size)
        # Two bounded caches. `_stable` holds answers about an existing service (positive and
        # NODATA), dropped when that service changes. `_volatile` holds everything that any
        # write may change: NXDOMAIN (a write can create the name), the apex SOA (its serial is
        # the registry version), NS, reverse names; it is cleared on every change. A flood of
        # names that do not exist therefore fills only `_volatile`, capped at a quarter.
        # NODATA answers in `_stable` carry the SOA serial of when they were built: a serial
        # that lags in a negative answer is harmless (it only sets the negative TTL), and the
        # SOA query itself is always current.
        size = config.dns_cache_size
        self._volatile_cap = size // 4
        self._stable_cap = size - self._volatile_cap
        self._stable: dict[bytes, _Entry] = {}
        self._volatile: dict[bytes, _Entry] = {}
        self._by_service: dict[str, set[bytes]] = {}
        # Counters are plain ints on the hot path (a prometheus inc takes a lock, ~1 us) and
        # are added to the Prometheus metrics every second and at stop (`flush_metrics`).
        self._cells: dict[tuple[str, str, str], list[int]] = {}
        self._flushed: dict[tuple[str, str, str], int] = {}
        self._pairs: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        self.hits = self.misses = self.truncated = self.dropped = self.uncached = 0
        self._flushed_simple = [0, 0, 0, 0]
        self._flush_timer: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = registry.subscribe(self._on_change)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self._port = 0

    @property
    def port(self) -> int:
        """The bound port (UDP and TCP share it); 0 before `start`."""
        return self._port

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host = self._config.bind_address
        wanted = self._config.dns_port
        for _ in range(_BIND_ATTEMPTS if wanted == 0 else 1):
            # UDP first on the wanted (or an ephemeral) port, then TCP on the same number; with
            # port 0 another socket may hold that TCP port, so pick a new one and retry.
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, wanted)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._serve_tcp, host, port, backlog=1024)
            except OSError as exc:
                udp.close()
                if wanted != 0 or exc.errno != errno.EADDRINUSE:
                    raise
                continue
            sock = udp.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)
            self._udp, self._tcp, self._port = udp, tcp, port  # type: ignore[assignment]
            self._flush_timer = loop.call_later(_METRICS_FLUSH_SECONDS, self._periodic_flush)
            return
        raise OSError(errno.EADDRINUSE, "no port was free for both DNS UDP and TCP")

    async def stop(self) -> None:
        """Close the listeners and every open TCP connection; flush the metrics. Idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._tcp_writers):
            writer.close()  # their handlers see the stream end and return
        tasks = list(self._tcp_tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._config.shutdown_timeout_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        self.flush_metrics()

    # ---- cache invalidation --------------------------------------------------------------
    def _on_change(self, key: str | None, reason: str) -> None:
        self._view.invalidate()
        self._volatile.clear()
        if key is None:
            self._stable.clear()
            self._by_service.clear()
            return
        for cache_key in self._by_service.pop(key, ()):
            self._stable.pop(cache_key, None)

    def clear_cache(self) -> None:
        self._on_change(None, "clear")

    def cache_size(self) -> int:
        return len(self._stable) + len(self._volatile)

    def _store(self, key: bytes, entry: _Entry) -> None:
        dep = entry.depends_on
        if dep is None:
            cache = self._volatile
            if len(cache) >= self._volatile_cap:
                if not self._volatile_cap:
                    return
                del cache[next(iter(cache))]  # oldest first: insertion order
            cache[key] = entry
            return
        cache = self._stable
        if len(cache) >= self._stable_cap:
            if not self._stable_cap:
                return
            old_key = next(iter(cache))
            old = cache.pop(old_key)
            keys = self._by_service.get(old.depends_on)  # type: ignore[arg-type]
            if keys is not None:
                keys.discard(old_key)
                if not keys:
                    del self._by_service[old.depends_on]  # type: ignore[arg-type]
        cache[key] = entry
        self._by_service.setdefault(dep, set()).add(key)

    # ---- metrics -------------------------------------------------------------------------
    def _cell(self, transport: str, qtype: int, rcode: int) -> list[int]:
        # Labels come from fixed tables, so hostile query types cannot add label values.
        labels = (transport, TYPE_NAMES.get(qtype, "other"), RCODE_NAMES.get(rcode, "other"))
        cell = self._cells.get(labels)
        if cell is None:
            cell = self._cells[labels] = [0]
        return cell

    def _cells_for(self, qtype: int, rcode: int) -> tuple[list[int], list[int]]:
        key = (TYPE_NAMES.get(qtype, "other"), rcode)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = (
                self._cell("udp", qtype, rcode),
                self._cell("tcp", qtype, rcode),
            )
        return pair

    def flush_metrics(self) -> None:
        """Add what was counted since the last flush to the Prometheus metrics."""
        m = self._metrics
        for labels, cell in self._cells.items():
            delta = cell[0] - self._flushed.get(labels, 0)
            if delta:
                m.dns_queries.labels(*labels).inc(delta)
                self._flushed[labels] = cell[0]
        # Hits are not counted on the hot path: every response adds one to a query cell, and
        # each is an error (never cached), a miss or a hit.
        self.hits = sum(c[0] for c in self._cells.values()) - self.misses - self.uncached
        now = [self.hits, self.misses, self.truncated, self.dropped]
        counters = (m.dns_cache_hits, m.dns_cache_misses, m.dns_truncated, m.dns_dropped)
        for i, counter in enumerate(counters):
            if now[i] != self._flushed_simple[i]:
                counter.inc(now[i] - self._flushed_simple[i])
        self._flushed_simple = now

    def _periodic_flush(self) -> None:
        self.flush_metrics()
        loop = asyncio.get_running_loop()
        self._flush_timer = loop.call_later(_METRICS_FLUSH_SECONDS, self._periodic_flush)

    # ---- TCP -----------------------------------------------------------------------------
    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Length-prefixed queries, answered in order, until idle, closed or not a query."""
        if len(self._tcp_writers) >= self._config.dns_tcp_max_connections:
            writer.close()  # over the limit: new connections are closed, open ones keep going
            return
        task = asyncio.current_task()
        assert task is not None
        self._tcp_writers.add(writer)
        self._tcp_tasks.add(task)
        gauge = self._metrics.dns_tcp_connections
        gauge.inc()
        idle = self._config.dns_tcp_idle_seconds
        try:
            while True:
                async with asyncio.timeout(idle):
                    prefix = await reader.readexactly(2)
                    message = await reader.readexactly(int.from_bytes(prefix, "big"))
                response = self.respond(message, True)
                if response is None:
                    break  # no header or not a query: the stream cannot be trusted any more
                writer.write(len(response).to_bytes(2, "big") + response)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # closed by the client, idle too long, or reset: all normal endings
        finally:
            self._tcp_writers.discard(writer)
            self._tcp_tasks.discard(task)
            gauge.dec()
            writer.close()

    # ---- the hot path --------------------------------------------------------------------
    def respond(self, data: bytes, tcp: bool) -> bytes | None:
        """The response to one query message, or None to drop it (no header, or a response).

        Fast path: a cache hit on the query's exact bytes. The question's end is taken as the
        first zero byte, without walking the labels. That is safe: keys are stored only after a
        full parse, and if a stored question's bytes equal these, its name held no zero byte
        before its end, so parsing these bytes would find the very same question.
        """
        try:
            size = len(data)
            if size < 12 or data[2] & 0xF8 or data[4:10] != _ONE_QUESTION:
                return self._respond(data, tcp)  # not QUERY, or not one plain question
            qend = data.find(0, 12) + 5
            if qend < 17 or qend > size:
                return self._respond(data, tcp)
            if data[11] == 0 and data[10] == 0:
                edns = b"\x00"
                limit = TCP_LIMIT if tcp else UDP_PLAIN_LIMIT
            elif (
                data[11] == 1
                and data[10] == 0
                and size >= qend + 11
                and data[qend] == 0  # one OPT, version 0: what EDNS resolvers send
                and data[qend + 2] == OPT
                and data[qend + 1] == 0
                and data[qend + 6] == 0
                and qend + 11 + (data[qend + 9] << 8 | data[qend + 10]) <= size
            ):
                edns = b"\x01"
                payload = data[qend + 3] << 8 | data[qend + 4]
                limit = TCP_LIMIT if tcp else max(UDP_PLAIN_LIMIT, min(payload, self._max_udp))
            else:
                return self._respond(data, tcp)
            key = data[12:qend] + edns
            entry = self._stable.get(key) or self._volatile.get(key)
            if entry is None or self.invalidate_every_query:
                # A miss. Walk the labels here, for the usual lowercase name: it validates the
                # name, proves the first zero byte ends it, and splits it, all in one pass.
                end = qend - 5
                if end - 11 > 255:
                    return self._respond(data, tcp)
                wire = data[12 : end + 1]
                if wire.lower() != wire:
                    return self._respond(data, tcp)  # mixed case (0x20): the full parse
                text = wire.decode("latin-1")
                labels: list[str] = []
                add = labels.append
                stop = end - 12
                at = 0
                while at < stop:
                    length = wire[at]
                    if length > 63:
                        return self._respond(data, tcp)
                    at += 1
                    add(text[at : at + length])
                    at += length
                if at != stop:
                    return self._respond(data, tcp)  # a label held a zero byte
                if self.invalidate_every_query:
                    self.clear_cache()
                self.misses += 1
                entry = self._miss(data, end, qend, key, edns == b"\x01", tuple(labels))
            # (the lines below are _serve, inlined: this is the path that runs most)
            entry.cells[tcp][0] += 1
            if entry.size <= limit:
                tail = entry.tail
                if entry.n:
                    turn = entry.turn = (entry.turn + 1) % entry.n
                    cut = turn * entry.rr
                    end = entry.an_end
                    tail = tail[cut:end] + tail[:cut] + tail[end:]
                return data[:2] + entry.hdr[data[2] & 1] + data[12:qend] + tail
            return self._fit(entry, data, qend, limit, tcp)
        except Exception:
            # A bug must not look like an empty zone: answer SERVFAIL, log and count it.
            log.exception("DNS query failed")
            self._metrics.internal_errors.labels("dns").inc()
            return self._error(data, SERVFAIL, None, False, tcp)

    def _respond(self, data: bytes, tcp: bool) -> bytes | None:
        """The full parse, for everything the fast path did not answer."""
        size = len(data)
        if size < 12 or data[2] & 0x80:
            self.dropped += 1  # too short for a header, or a response (never answer those)
            return None
        if data[2] & 0x78:
            return self._error(data, NOTIMP, None, False, tcp)
        if data[4:10] != _ONE_QUESTION:
            return self._error(data, FORMERR, None, False, tcp)
        # The question name, label by label; compression pointers are not allowed here.
        i = 12
        try:
            length = data[i]
            while length:
                if length > 63:
                    return self._error(data, FORMERR, None, False, tcp)
                i += length + 1
                length = data[i]
        except IndexError:
            return self._error(data, FORMERR, None, False, tcp)
        qend = i + 5
        if qend > size or i - 11 > 255:
            return self._error(data, FORMERR, None, False, tcp)
        if data[11] == 0 and data[10] == 0:
            edns = False
            limit = TCP_LIMIT if tcp else UDP_PLAIN_LIMIT
        else:
            parsed = self._parse_additional(data, qend)
            if parsed is None:
                return self._error(data, FORMERR, None, False, tcp)
            version, payload = parsed
            if version < 0:
                edns = False
                limit = TCP_LIMIT if tcp else UDP_PLAIN_LIMIT
            elif version:
                return self._error(data, BADVERS, qend, True, tcp)
            else:
                edns = True
                limit = TCP_LIMIT if tcp else max(UDP_PLAIN_LIMIT, min(payload, self._max_udp))
        key = data[12 : i + 1].lower() + data[i + 1 : qend] + (b"\x01" if edns else b"\x00")
        if self.invalidate_every_query:
            self.clear_cache()
        entry = self._stable.get(key) or self._volatile.get(key)
        if entry is None:
            self.misses += 1
            entry = self._miss(data, i, qend, key, edns)
        return self._serve(entry, data, qend, limit, tcp)

    def _serve(self, entry: _Entry, data: bytes, qend: int, limit: int, tcp: bool) -> bytes:
        """The cached answer with this query's id, RD bit and question (see `respond`)."""
        entry.cells[tcp][0] += 1
        if entry.size <= limit:
            tail = entry.tail
            if entry.n:
                turn = entry.turn = (entry.turn + 1) % entry.n
                cut = turn * entry.rr
                end = entry.an_end
                tail = tail[cut:end] + tail[:cut] + tail[end:]
            return data[:2] + entry.hdr[data[2] & 1] + data[12:qend] + tail
        return self._fit(entry, data, qend, limit, tcp)

    def _fit(self, entry: _Entry, data: bytes, qend: int, limit: int, tcp: bool) -> bytes:
        """A smaller form of an answer that does not fit `limit`."""
        # The last alternative (TC, no records) always fits: a question is at most 259 bytes.
        smaller = entry.smaller()
        _, hdr, tail = next((alt for alt in smaller if alt[0] <= limit), smaller[-1])
        if hdr[0][0] & 2:
            self.truncated += 1
            if tcp and entry.n:
                # Over TCP nothing better will come: as many whole records as fit, rotated.
                keep = (limit - 12 - entry.qlen - len(entry.opt)) // entry.rr
                turn = entry.turn = (entry.turn + 1) % entry.n
                cut = turn * entry.rr
                rotated = entry.tail[cut : entry.an_end] + entry.tail[:cut]
                tail = rotated[: keep * entry.rr] + entry.opt
                counts = _COUNTS.pack(1, keep, 0, 1 if entry.opt else 0)
                hdr = (hdr[0][:2] + counts, hdr[1][:2] + counts)
        return data[:2] + hdr[data[2] & 1] + data[12:qend] + tail

    @staticmethod
    def _parse_additional(data: bytes, offset: int) -> tuple[int, int] | None:
        """Find the OPT record among the additional records: (version, payload size), (-1, 0)
        without one, or None if the section is malformed or has two OPT records."""
        count = data[10] << 8 | data[11]
        found: tuple[int, int] | None = None
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
                found = (data[offset + 5], data[offset + 2] << 8 | data[offset + 3])
            offset += 10 + rdlen
            if offset > size:
                return None
        return found if found is not None else (-1, 0)

    def _miss(
        self, data: bytes, i: int, qend: int, key: bytes, edns: bool, qname: Name | None = None
    ) -> _Entry:
        """Resolve, encode and keep the answer to the question ending at `i` (its zero byte).
        `key` starts with the lowercased name; `qname` is that name split, if known."""
        qwire = key[: i - 11]
        if qname is None:
            text = qwire.decode("latin-1")  # one decode, then slices: labels may hold any byte
            labels: list[str] = []
            at = 0
            length = qwire[0]
            while length:
                labels.append(text[at + 1 : at + 1 + length])
                at += length + 1
                length = qwire[at]
            qname = tuple(labels)
        qtype = data[i + 1] << 8 | data[i + 2]
        qclass = data[i + 3] << 8 | data[i + 4]
        answer = resolve(Question(qname, qtype, qclass), self._view, self._config)
        entry = _Entry(answer, qname, qwire, qend - 12, self._opt if edns else b"")
        entry.cells = self._cells_for(qtype, answer.rcode)
        if answer.rcode != SERVFAIL:  # SERVFAIL only means "not loaded yet": never keep it
            self._store(key, entry)
        return entry

    def _error(self, data: bytes, rcode: int, qend: int | None, edns: bool, tcp: bool) -> bytes:
        """An answer without records: the question echoed if it parsed, OPT if EDNS0."""
        qtype = 0
        opt = _opt(self._max_udp, rcode) if edns else b""
        flags = bytes((0x80 | (data[2] & 0x79), rcode & 0xF))
        counts = _COUNTS.pack(1 if qend else 0, 0, 0, 1 if opt else 0)
        question = data[12:qend] if qend else b""
        if qend:
            qtype = data[qend - 4] << 8 | data[qend - 3]
        self._cell("tcp" if tcp else "udp", qtype, rcode)[0] += 1
        self.uncached += 1
        return data[:2] + flags + counts + question + opt


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._respond = server.respond
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        response = self._respond(data, False)
        if response is not None and self._transport is not None:
            self._transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do.
        log.debug("DNS UDP error: %s", exc)
