"""Token buckets per client network: the prefix that names a client, the rate and burst, and a
table that stays bounded whatever the number of networks."""

from __future__ import annotations

import pytest

from service_discovery.dns import ratelimit
from service_discovery.dns.ratelimit import Buckets, network


def test_a_client_is_its_24_or_56() -> None:
    assert network("10.1.2.3") == network("10.1.2.250") != network("10.1.3.3")
    assert network("::ffff:10.1.2.3") == "::ffff:10.1.2"  # IPv4-mapped: still its /24
    assert network("2001:db8:0:1200::1") == network("2001:db8:0:12ff:ffff::9")  # one /56
    assert network("2001:db8:0:1200::1") != network("2001:db8:0:1300::1")
    assert network("fe80::1%eth0") == network("fe80::2")  # the scope is not part of it
    assert network("zz::1::2") == "zz::1::2"  # not an address: itself


def test_rate_and_burst() -> None:
    """2 a second, 5 at once: 5 in a burst, then one every half second; a full bucket does not
    grow past the burst however long it waits."""
    now = [100.0]
    buckets = Buckets(2, 5, clock=lambda: now[0])
    assert [buckets.take("10.0.0.1") for _ in range(6)] == [True] * 5 + [False]
    assert buckets.take("10.0.0.77") is False  # same /24, same bucket
    assert buckets.take("10.0.1.1") is True  # another network
    now[0] += 0.5
    assert buckets.take("10.0.0.1") is True and buckets.take("10.0.0.1") is False
    now[0] += 3600
    assert [buckets.take("10.0.0.1") for _ in range(6)] == [True] * 5 + [False]


def test_the_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. networks whose bucket refilled are forgotten first when the table is full; 2. if every
    network is still active, the older half goes; the table never holds more than its cap."""
    monkeypatch.setattr(ratelimit, "MAX_NETWORKS", 100)
    now = [0.0]
    buckets = Buckets(1, 1, clock=lambda: now[0])
    for i in range(100):
        buckets.take(f"10.0.{i}.1")
    now[0] += 10  # all refilled
    buckets.take("10.1.0.1")
    assert len(buckets) == 1
    for i in range(1000):  # a flood from ever-new networks, none refilled
        buckets.take(f"10.{2 + i // 256}.{i % 256}.1")
        assert len(buckets) <= 100
    assert buckets.take("10.5.231.1") is False  # the newest are remembered: still empty
