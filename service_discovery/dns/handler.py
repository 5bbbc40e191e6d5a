"""One query message in, its response bytes out: the hot path of the DNS front-end.

This module owns the order of work for a query: the fast path (a cached answer found by the
query's exact bytes, spliced into a response without parsing), the full parse for everything
else (`wire`), a miss (resolve, encode once, keep), fitting an answer into the client's size
limit, and error responses. Deciding per query what a client may cost (a budget for misses,
response-rate limiting, DNS cookies) belongs here too, where misses and responses are made;
the transport and its per-connection limits are `server`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from service_discovery.config import Config
from service_discovery.dns.answers import AnswerCache
from service_discovery.dns.cookies import Cookies
from service_discovery.dns.counters import Counters
from service_discovery.dns.exact import ExactAnswers
from service_discovery.dns.ratelimit import BURST_SECONDS, Buckets
from service_discovery.dns.records import (
    BADVERS,
    FORMERR,
    NOERROR,
    NOTIMP,
    OPT,
    REFUSED,
    SERVFAIL,
    Name,
    Question,
)
from service_discovery.dns.resolver import resolve
from service_discovery.dns.wire import (
    COUNTS,
    NO_EDNS,
    ONE_QUESTION,
    TCP_LIMIT,
    UDP_PLAIN_LIMIT,
    EncodedAnswer,
    error_response,
    opt,
    opt_with,
    parse_additional,
    question_end,
    split_labels,
)
from service_discovery.dns.zone import Zone, ZoneView
from service_discovery.metrics import Metrics

log = logging.getLogger(__name__)

# The fast path keeps an answer's whole responses (EncodedAnswer.responses) for the RD bit of
# the queries that hit it when they take at most this many bytes: a response is then the id
# and one of them. Larger answers (many records) are rotated per response instead. So a
# cached answer holds at most about twice this more, and typically (three addresses) a few
# hundred bytes more.
_FAST_BYTES = 1024


class QueryHandler:
    """Answers queries from `view` through `answers`, counting in `counters`."""

    def __init__(
        self,
        config: Config,
        zone: Zone,
        view: ZoneView,
        answers: AnswerCache,
        counters: Counters,
        metrics: Metrics,
    ) -> None:
        self._zone = zone
        self._view = view
        self._answers = answers
        # The cache's maps, read here directly: a method call per query would cost a few
        # per cent of a hit. AnswerCache clears them in place and never replaces them.
        self._stable = answers.stable
        self._volatile = answers.volatile
        self._counters = counters
        self._metrics = metrics
        self._udp_size = config.dns_max_udp_size  # what our OPT record offers
        self._opt = opt(config.dns_max_udp_size)
        # DNS cookies (RFC 7873); None: COOKIE options are ignored like any other option.
        secret = config.dns_cookie_secret
        self._cookies = (
            Cookies(bytes.fromhex(secret) if secret else None) if config.dns_cookies else None
        )
        # Response-rate limiting of UDP answers per client network (`respond_limited`); None:
        # off. While it is on, a client without a valid server cookie gets UDP answers of at
        # most dns_rrl_udp_size_without_cookie bytes (TC beyond), so even its allowed answers
        # amplify little: the fast path, which never sees a cookie, uses `_max_udp`.
        rrl = config.dns_rrl_responses_per_second
        self._rrl = Buckets(rrl, rrl * BURST_SECONDS) if rrl else None
        self._max_udp = (
            min(config.dns_max_udp_size, config.dns_rrl_udp_size_without_cookie)
            if rrl
            else config.dns_max_udp_size
        )
        # The miss budget: a client network's cache misses, one bucket per transport (UDP,
        # TCP), so a flood of spoofed UDP cannot spend what the real clients of that network
        # fall back to TCP for. None: no budget.
        rate = config.dns_miss_budget_per_second
        burst = rate * BURST_SECONDS
        self._misses = (Buckets(rate, burst), Buckets(rate, burst)) if rate else None
        # What a UDP query beyond a limit gets: every `_slip`-th an empty answer with TC set (a
        # real client retries over TCP; a spoofed address gets no more bytes than were sent),
        # the others nothing, which costs least. One count for both limits.
        self._slip = config.dns_slip
        self._limited_udp = 0
        self._cells = {
            (limit, action): counters.limited(limit, action)
            for limit in ("misses", "rrl")
            for action in ("truncated", "dropped", "refused")
        }
        # Benchmark mode (DnsServer sets it): drop every cached answer before each query, so
        # each one is a miss. Answers only: a miss after a change of another service, or of a
        # name that does not exist, finds the service indexes built.
        self.invalidate_every_query = False
        self.exact = ExactAnswers()  # UDP datagrams seen before (see dns/exact)

    def changed(self, key: str | None, reason: str = "") -> None:
        """Service `key` changed (None: anything may have): drop the answers it made stale."""
        self._view.changed(key)
        self._answers.changed(key)
        self.exact.clear()  # which of them came from `key`'s answers is not worth knowing

    def clear_cache(self) -> None:
        self.changed(None, "clear")

    # ---- the hot path --------------------------------------------------------------------
    def respond(self, data: bytes, tcp: bool, client: str | None = None) -> bytes | None:
        """The response to one query message, or None to drop it (no header, or a response).
        `client` is the sender's address, for the per-client limits (None: none apply).

        Fast path: a cache hit on the query's exact bytes. The question's end is taken as the
        first zero byte, without walking the labels. That is safe: keys are stored only after a
        full parse, and if a stored question's bytes equal these, its name held no zero byte
        before its end, so parsing these bytes would find the very same question.
        """
        try:
            if not tcp:
                hit = self.exact.get(data[2:])
                if hit is not None:  # this very datagram (but its id) was answered from cache
                    hit[0][0] += 1
                    return data[:2] + next(hit[1])
            size = len(data)
            if size < 12 or data[2] & 0xF8 or data[4:10] != ONE_QUESTION:
                return self._respond(data, tcp, client)  # not QUERY, or not one plain question
            qend = data.find(0, 12) + 5
            if qend < 17 or qend > size:
                return self._respond(data, tcp, client)
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
                # options (a COOKIE?) are read by the full parse, when cookies are on
                and (self._cookies is None or data[qend + 9] == 0 == data[qend + 10])
            ):
                edns = b"\x01"
                payload = data[qend + 3] << 8 | data[qend + 4]
                limit = TCP_LIMIT if tcp else max(UDP_PLAIN_LIMIT, min(payload, self._max_udp))
            else:
                return self._respond(data, tcp, client)
            question = data[12:qend]
            key = question + edns
            entry = self._stable.get(key) or self._volatile.get(key)
            if entry is None or self.invalidate_every_query:
                # A miss. Walk the labels here, for the usual lowercase name: it validates the
                # name, proves the first zero byte ends it, and splits it, all in one pass.
                end = qend - 5
                if end - 11 > 255:
                    return self._respond(data, tcp, client)
                wire = data[12 : end + 1]
                if wire.lower() != wire:
                    return self._respond(data, tcp, client)  # mixed case (0x20): the full parse
                text = wire.decode("latin-1")
                labels: list[str] = []
                add = labels.append
                stop = end - 12
                at = 0
                while at < stop:
                    length = wire[at]
                    if length > 63:
                        return self._respond(data, tcp, client)
                    at += 1
                    add(text[at : at + length])
                    at += length
                if at != stop:
                    return self._respond(data, tcp, client)  # a label held a zero byte
                if self.invalidate_every_query:
                    self._answers.changed(None)
                if self._misses is not None and client is not None:
                    if not self._misses[tcp].take(client):
                        return self._beyond_limit("misses", data, qend, edns == b"\x01", tcp, b"")
                self._counters.misses += 1
                entry = self._miss(data, end, qend, key, edns == b"\x01", tuple(labels))
                return self._serve(entry, data, qend, limit, tcp)  # it may never be asked again
            # A hit: the id and one of the answer's whole responses (see _FAST_BYTES), or _serve
            fast = entry.fast
            rd = data[2] & 1
            bodies = fast[rd] if fast is not None else None
            if bodies is None:
                if entry.size * (entry.n or 1) > _FAST_BYTES:
                    return self._serve(entry, data, qend, limit, tcp)
                if fast is None:
                    fast = entry.fast = [None, None]
                bodies = fast[rd] = entry.responses(question, rd)
            if entry.size <= limit:
                cell = entry.cells[tcp]
                cell[0] += 1
                if not tcp:
                    self.exact.keep(data[2:], cell, bodies)
                return data[:2] + next(bodies)
            return self._serve(entry, data, qend, limit, tcp)  # it does not fit: a smaller form
        except Exception:
            # A bug must not look like an empty zone: answer SERVFAIL, log and count it.
            log.exception("DNS query failed")
            self._metrics.internal_errors.labels("dns").inc()
            return self._error(data, SERVFAIL, None, False, tcp)

    @property
    def needs_client(self) -> bool:
        """Whether anything here reads a query's `client` (the per-client limits, cookies)."""
        return self._misses is not None or self._rrl is not None or self._cookies is not None

    @property
    def exact_udp(self) -> ExactAnswers | None:
        """`exact`, for a UDP listener to answer from before calling `respond_udp`; None while
        RRL is on, which must see every datagram."""
        return self.exact if self._rrl is None else None

    @property
    def respond_udp(self) -> Callable[[bytes, bool, str | None], bytes | None]:
        """What answers a UDP datagram: `respond`, or with RRL on, `respond_limited`. Chosen
        once, so that with RRL off UDP answers pay nothing for it."""
        return self.respond if self._rrl is None else self.respond_limited

    def respond_limited(self, data: bytes, tcp: bool, client: str | None) -> bytes | None:
        """`respond` under response-rate limiting (UDP only: TCP answers cannot be sent to a
        spoofed address). Within its network's rate a query is answered as usual; beyond it,
        only a query with a valid server cookie is, and the others get every `slip`-th time
        an empty answer with TC set (a real client retries over TCP) and otherwise nothing.
        """
        if self._rrl is None or client is None or self._rrl.take(client):
            return self.respond(data, tcp, client)
        return self._respond(data, tcp, client, over_rate=True)

    def _respond(
        self, data: bytes, tcp: bool, client: str | None, over_rate: bool = False
    ) -> bytes | None:
        """The full parse, for everything the fast path did not answer; `over_rate`: the
        client's network is over its RRL rate (see `respond_limited`)."""
        if len(data) < 12 or data[2] & 0x80:
            self._counters.dropped += 1  # too short for a header, or a response: never answer
            return None
        query = not data[2] & 0x78  # opcode QUERY
        qend = question_end(data) if query and data[4:10] == ONE_QUESTION else 0
        parsed = NO_EDNS if not qend or data[10] == data[11] == 0 else parse_additional(data, qend)
        if over_rate and (parsed is None or parsed.version or parsed.cookie is None):
            # Over the rate and no cookie that could prove the address: errors, answers, all
            # are limited alike.
            edns = parsed is not None and parsed.version == 0
            return self._beyond_limit("rrl", data, qend, edns, tcp, b"")
        if not query:
            return self._error(data, NOTIMP, None, False, tcp)
        if not qend or parsed is None:
            return self._error(data, FORMERR, None, False, tcp)
        i = qend - 5  # the name's zero byte
        cookie = b""  # our COOKIE option for the answer, if the query had one
        if parsed.version < 0:
            edns = False
            limit = TCP_LIMIT if tcp else UDP_PLAIN_LIMIT
        elif parsed.version:
            return self._error(data, BADVERS, qend, True, tcp)
        else:
            edns = True
            max_udp = self._max_udp
            if parsed.cookie is not None and self._cookies is not None:
                checked = self._cookies.answer(parsed.cookie, client)
                if checked is None:
                    return self._error(data, FORMERR, qend, True, tcp)  # RFC 7873 5.2.2
                cookie, valid = checked
                if valid:
                    # A proven address: a spoofed flood cannot carry its cookie.
                    max_udp = self._udp_size
                    over_rate = False
            limit = TCP_LIMIT if tcp else max(UDP_PLAIN_LIMIT, min(parsed.payload, max_udp))
            limit -= len(cookie)  # the answer's OPT record grows by the option
        if over_rate:
            return self._beyond_limit("rrl", data, qend, edns, tcp, cookie)
        key = data[12 : i + 1].lower() + data[i + 1 : qend] + (b"\x01" if edns else b"\x00")
        if self.invalidate_every_query:
            self._answers.changed(None)
        entry = self._stable.get(key) or self._volatile.get(key)
        if entry is None:
            if self._misses is not None and client is not None:
                if not self._misses[tcp].take(client):
                    return self._beyond_limit("misses", data, qend, edns, tcp, b"")
            self._counters.misses += 1
            entry = self._miss(data, i, qend, key, edns)
        response = self._serve(entry, data, qend, limit, tcp)
        if cookie:  # our OPT record ends every EDNS answer: swap in one with the cookie
            return response[: -len(self._opt)] + opt_with(self._opt, cookie)
        return response

    def _serve(self, entry: EncodedAnswer, data: bytes, qend: int, limit: int, tcp: bool) -> bytes:
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

    def _fit(self, entry: EncodedAnswer, data: bytes, qend: int, limit: int, tcp: bool) -> bytes:
        """A smaller form of an answer that does not fit `limit`."""
        # The last alternative (TC, no records) always fits: a question is at most 259 bytes.
        smaller = entry.smaller()
        form = next((alt for alt in smaller if alt.size <= limit), smaller[-1])
        hdr, tail = form.hdr, form.tail
        if form.truncated:
            self._counters.truncated += 1
            if tcp:
                # Over TCP nothing better will come: as many whole records as fit.
                keep, records = entry.within(limit - 12 - entry.qlen - len(entry.opt))
                tail = records + entry.opt
                counts = COUNTS.pack(1, keep, 0, 1 if entry.opt else 0)
                hdr = (hdr[0][:2] + counts, hdr[1][:2] + counts)
        return data[:2] + hdr[data[2] & 1] + data[12:qend] + tail

    def _miss(
        self, data: bytes, i: int, qend: int, key: bytes, edns: bool, qname: Name | None = None
    ) -> EncodedAnswer:
        """Resolve, encode and keep the answer to the question ending at `i` (its zero byte).
        `key` starts with the lowercased name; `qname` is that name split, if known."""
        qwire = key[: i - 11]
        if qname is None:
            qname = split_labels(qwire)
        qtype = data[i + 1] << 8 | data[i + 2]
        qclass = data[i + 3] << 8 | data[i + 4]
        answer = resolve(Question(qname, qtype, qclass), self._view, self._zone)
        entry = EncodedAnswer(answer, qname, qwire, qend - 12, self._opt if edns else b"")
        entry.cells = self._counters.cells_for(qtype, answer.rcode)
        if answer.rcode != SERVFAIL:  # SERVFAIL only means "not loaded yet": never keep it
            self._answers.store(key, entry)
        return entry

    def _beyond_limit(
        self, limit: str, data: bytes, qend: int, edns: bool, tcp: bool, cookie: bytes
    ) -> bytes | None:
        """A query beyond `limit`: the miss budget, or its network's RRL rate. Over TCP (only
        the miss budget applies there) REFUSED; over UDP every `_slip`-th query (never one
        without a question) an empty answer with TC set, carrying our server cookie if the
        query had a cookie, so that a cookie-aware client can come back exempt from RRL; the
        others are dropped. Nothing is resolved."""
        if tcp:
            self._cells[(limit, "refused")][0] += 1
            return self._error(data, REFUSED, qend, edns, tcp)
        self._limited_udp += 1
        if not qend or not self._slip or self._limited_udp % self._slip:
            self._cells[(limit, "dropped")][0] += 1
            return None
        self._cells[(limit, "truncated")][0] += 1
        self._counters.truncated += 1
        response = self._error(data, NOERROR, qend, edns, tcp, truncated=True)
        if cookie:
            return response[: -len(self._opt)] + opt_with(self._opt, cookie)
        return response

    def _error(
        self,
        data: bytes,
        rcode: int,
        qend: int | None,
        edns: bool,
        tcp: bool,
        truncated: bool = False,
    ) -> bytes:
        """An answer without records: the question echoed if it parsed, OPT if EDNS0."""
        qtype = data[qend - 4] << 8 | data[qend - 3] if qend else 0
        self._counters.cell("tcp" if tcp else "udp", qtype, rcode)[0] += 1
        self._counters.uncached += 1
        our_opt = opt(self._udp_size, rcode) if edns else b""
        return error_response(data, rcode, qend, our_opt, truncated)
