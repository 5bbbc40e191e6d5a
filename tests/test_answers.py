"""The answer cache: bounded maps that drop their oldest answer first, and what a change drops."""

from __future__ import annotations

from service_discovery.dns.answers import AnswerCache
from service_discovery.dns.records import NOERROR, NXDOMAIN, Answer
from service_discovery.dns.wire import EncodedAnswer


def encoded(depends_on: str | None) -> EncodedAnswer:
    rcode = NXDOMAIN if depends_on is None else NOERROR
    return EncodedAnswer(Answer(rcode, depends_on=depends_on), ("x",), b"\x01x\x00", 6, b"")


def test_full_maps_drop_their_oldest_answer() -> None:
    """Size 40: 10 negative answers, 30 positive ones. 1. 1,000 negative answers keep the last
    10; 2. 100 positive answers keep the last 30, and `changed` drops a service's answers from
    the index of services too; 3. a service that changes and comes back again and again does
    not grow the queue of keys beyond twice the map."""
    cache = AnswerCache(40)
    for i in range(1000):
        cache.store(b"nx%d" % i, encoded(None))
    assert list(cache.volatile) == [b"nx%d" % i for i in range(990, 1000)]

    for i in range(100):
        cache.store(b"pos%d" % i, encoded(f"svc{i % 7}"))
    assert list(cache.stable) == [b"pos%d" % i for i in range(70, 100)]
    cache.changed("svc3")
    assert not any(k in cache.stable for k in (b"pos73", b"pos80", b"pos87", b"pos94"))
    assert cache.volatile == {}
    assert len(cache.stable) == 26

    for _ in range(500):  # churn: stored, dropped by a change, stored again
        cache.store(b"churn", encoded("busy"))
        cache.changed("busy")
    cache.store(b"churn", encoded("busy"))
    assert len(cache._stable_order) <= 2 * len(cache.stable) + 64
    for i in range(30):  # the oldest go first, skipping keys a change dropped already
        cache.store(b"new%d" % i, encoded("fresh"))
    assert list(cache.stable) == [b"new%d" % i for i in range(30)]
    cache.changed(None)
    assert len(cache) == 0 and not cache._stable_order and not cache._volatile_order
