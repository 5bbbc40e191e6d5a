"""What DNS answers are made of, shared by the resolver and the wire codec.

This module owns the record types and response codes we name, the `Name` form (a tuple of
lowercase labels, so a label holding a dot or odd bytes can never be mistaken for two labels of
the zone), the record, question and answer tuples, and the conversions between names and text.
It does no I/O and decides nothing.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

# Record types and classes (RFC 1035, 3596, 2782, 6891, 8482).
A, NS, SOA, PTR, TXT, AAAA, SRV, OPT = 1, 2, 6, 12, 16, 28, 33, 41
IXFR, AXFR, ANY = 251, 252, 255
CLASS_IN = 1
TYPE_NAMES = {A: "A", NS: "NS", SOA: "SOA", PTR: "PTR", AAAA: "AAAA", SRV: "SRV", ANY: "ANY"}
TYPE_NAMES.update({OPT: "OPT", IXFR: "IXFR", AXFR: "AXFR", 5: "CNAME", 15: "MX", TXT: "TXT"})
TYPE_NAMES.update({64: "SVCB", 65: "HTTPS", 99: "SPF", 257: "CAA"})

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
RCODE_NAMES = {
    NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS",
}  # fmt: skip

Name = tuple[str, ...]
IN_ADDR: Name = ("in-addr", "arpa")
IP6: Name = ("ip6", "arpa")


class Srv(NamedTuple):
    priority: int
    weight: int
    port: int
    target: Name


class Txt(NamedTuple):
    """A TXT record's character-strings (RFC 1035 3.3.14), each at most 255 bytes."""

    strings: tuple[bytes, ...]


class Soa(NamedTuple):
    mname: Name
    rname: Name
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


# Records, questions and answers are NamedTuples: a miss builds several per query, and a tuple
# is several times cheaper to make than a frozen dataclass.
class Record(NamedTuple):
    """One resource record, class IN. rdata: address text (A, AAAA), a Name (NS, PTR), Srv,
    Soa, Txt."""

    name: Name
    rtype: int
    ttl: int
    rdata: str | Name | Srv | Soa | Txt

    def to_zone(self) -> str:
        """The record as a zone-file line: `webapp.svc.cluster.local. 5 IN A 127.0.0.1`."""
        data = self.rdata
        if isinstance(data, Srv):
            text = f"{data.priority} {data.weight} {data.port} {name_text(data.target)}"
        elif isinstance(data, Soa):
            text = (
                f"{name_text(data.mname)} {name_text(data.rname)} {data.serial} {data.refresh} "
                f"{data.retry} {data.expire} {data.minimum}"
            )
        elif isinstance(data, Txt):
            text = " ".join(map(_string_text, data.strings))
        elif isinstance(data, str):
            text = data
        else:
            text = name_text(data)
        return f"{name_text(self.name)} {self.ttl} IN {TYPE_NAMES[self.rtype]} {text}"


class Question(NamedTuple):
    name: Name  # lowercase labels, no root label
    qtype: int
    qclass: int = CLASS_IN


class Answer(NamedTuple):
    rcode: int
    authoritative: bool = True
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    # What a change must touch to make this answer stale: the key of the one service it was
    # built from, or None for "any change" (negative answers, the apex, reverse names).
    depends_on: str | None = None


def name_text(name: Name) -> str:
    """Presentation form with the trailing dot; unusual bytes escaped as in zone files."""
    if not name:
        return "."
    return ".".join(_label_text(label) for label in name) + "."


def _label_text(label: str) -> str:
    if label.isascii() and (label.replace("-", "").replace("_", "").isalnum()):
        return label
    out = []
    for ch in label:
        code = ord(ch)
        if ch in '.\\"();$@':
            out.append("\\" + ch)
        elif 0x21 <= code <= 0x7E:
            out.append(ch)
        else:
            out.append(f"\\{code:03d}")
    return "".join(out)


def _string_text(data: bytes) -> str:
    """A character-string as dig prints it: quoted, `"` and `\\` escaped, other bytes outside
    printable ASCII as \\DDD."""
    out = []
    for code in data:
        if code in (0x22, 0x5C):
            out.append("\\" + chr(code))
        elif 0x20 <= code <= 0x7E:
            out.append(chr(code))
        else:
            out.append(f"\\{code:03d}")
    return '"' + "".join(out) + '"'


def split_name(text: str) -> Name:
    """`WebApp.svc.cluster.local.` -> ("webapp", "svc", "cluster", "local") (tests, config)."""
    text = text.strip().rstrip(".").lower()
    return tuple(text.split(".")) if text else ()


def reverse_name(ip: str) -> Name:
    """The PTR owner name of an address: 1.0.0.127.in-addr.arpa or the 32-nibble ip6.arpa."""
    if ":" in ip:
        nibbles = ipaddress.IPv6Address(ip).exploded.replace(":", "")
        return tuple(reversed(nibbles)) + IP6
    return tuple(reversed(ip.split("."))) + IN_ADDR


def address_label(ip: str) -> str:
    """The label of an endpoint's own name, `<label>.<service>.<zone>`: an IPv4 address with
    dashes for dots (10-0-0-1), an IPv6 address in its RFC 5952 compressed form in hex, with
    dashes for colons (fd00--1; ::ffff:10.0.0.1 is --ffff-a00-1), as CoreDNS names the
    endpoints of a headless service."""
    if ":" not in ip:
        return ip.replace(".", "-")
    # Compressed here, not by `ipaddress`, whose text for mapped addresses differs by version.
    packed = ipaddress.IPv6Address(ip).packed
    words = [f"{packed[i] << 8 | packed[i + 1]:x}" for i in range(0, 16, 2)]
    start, length = 0, 0  # the first longest run of two or more zero words (RFC 5952 4.2)
    for i in range(8):
        run = 0
        while i + run < 8 and words[i + run] == "0":
            run += 1
        if run > length and run >= 2:
            start, length = i, run
    if length:
        words[start : start + length] = ["", ""] if length == 8 else [""]
        if start == 0 or start + length == 8:
            words.insert(0 if start == 0 else len(words), "")
    return "-".join(words)


def attribute_txt(name: str, value: str) -> Txt | None:
    """A service attribute as a TXT record, RFC 1464's `name=value`: a backquote and an `=` in
    the name are quoted with a backquote (the model allows no blanks in names, the other thing
    RFC 1464 quotes). UTF-8, cut into character-strings of 255 bytes, which clients join
    without separators (RFC 7208 3.3 says so of SPF's long TXT records). None if the record
    would not fit a TXT RDATA (65,535 bytes), possible only with SD_MAX_VALUE_LENGTH raised."""
    data = (name.replace("`", "``").replace("=", "`=") + "=" + value).encode()
    strings = tuple(data[i : i + 255] for i in range(0, len(data), 255))
    if len(data) + len(strings) > 65535:
        return None
    return Txt(strings)
