"""How each setting's text becomes its value: the parsers Config's fields name, each raising
ValueError on a bad value and saying what it accepts (for the one-line error of config.py)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service_discovery import dburl


@dataclass(frozen=True, slots=True)
class Parser:
    """How a setting's text becomes its value (ValueError if it cannot), and what it accepts,
    for the error message."""

    parse: Callable[[str], Any]
    accepts: str

    def __call__(self, raw: str) -> Any:
        return self.parse(raw)


def int_range(lo: int, hi: int) -> Parser:
    def parse(raw: str) -> int:
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError
        return value

    return Parser(parse, f"an integer from {lo} to {hi}")


def float_range(lo: float, hi: float) -> Parser:
    def parse(raw: str) -> float:
        value = float(raw)
        if not lo <= value <= hi:
            raise ValueError
        return value

    return Parser(parse, f"a number from {lo:g} to {hi:g}")


def choice(*choices: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError
        return value

    return Parser(parse, "one of " + ", ".join(choices))


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


boolean = Parser(_parse_bool, "true or false")


def _parse_ip(raw: str) -> str:
    return str(ipaddress.ip_address(raw.strip()))


ip = Parser(_parse_ip, "an IPv4 or IPv6 address")


def _parse_domain(raw: str) -> str:
    value = raw.strip().strip(".").lower()
    labels = value.split(".")
    if not value or any(not 0 < len(label) <= 63 for label in labels) or len(value) > 253:
        raise ValueError
    return value


domain = Parser(_parse_domain, "a DNS name such as svc.cluster.local")

# Free text (URLs, paths, tokens), taken as written.
verbatim = Parser(str, "text")
postgres_url = Parser(
    dburl.check,
    "a PostgreSQL URL such as postgresql://user@host1:5432,host2:5432/db?sslmode=verify-full",
)


def _parse_datacenter(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"[a-z0-9_-]{1,64}", value):
        raise ValueError
    return value


datacenter = Parser(_parse_datacenter, "1-64 letters, digits, _ and -, such as dc1")


def _parse_hex_secret(raw: str) -> str:
    value = raw.strip().lower()
    if len(bytes.fromhex(value)) != 16:
        raise ValueError
    return value


hex_secret = Parser(_parse_hex_secret, "32 hexadecimal digits (16 bytes)")


def secret_file(var: str, path: str, parse: Parser) -> Any:
    """Secret `var`'s value from the file `path` (its <VARIABLE>_FILE), parsed; ValueError with
    one line that never quotes the file."""
    if not path:
        raise ValueError(f"{var}_FILE is set but empty: give a path, or unset it")
    try:
        raw = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{var}_FILE: cannot read it ({exc.strerror})") from None
    if not raw:
        raise ValueError(f"{var}_FILE holds no value")
    try:
        return parse(raw)
    except (ValueError, TypeError):
        raise ValueError(f"{var}_FILE holds an invalid value: expected {parse.accepts}") from None
