"""`Endpoint`: a frozen value, whichever of its two layouts holds it (a replica holds a million)."""

from __future__ import annotations

import pickle
import sys
from dataclasses import FrozenInstanceError

import pytest

from service_discovery.model import Endpoint


def test_an_endpoint_is_a_frozen_value_whatever_it_holds() -> None:
    """1. equal fields, equal endpoints (and hashes), with or without a lease; 2. the fields
    an endpoint lacks read None; 3. renewed and tagged copies; 4. no field can be assigned or
    deleted; 5. repr, pickling and pattern matching see all five fields."""
    plain = Endpoint("10.0.0.1", ("a",))
    full = Endpoint("10.0.0.1", ("a",), 30, 100.0, "web-1")
    assert plain == Endpoint("10.0.0.1", ("a",)) and hash(plain) == hash(
        Endpoint("10.0.0.1", ("a",))
    )
    assert full == Endpoint(
        "10.0.0.1", ("a",), ttl_seconds=30, expires_at=100.0, instance_id="web-1"
    )
    assert plain != full and plain != Endpoint("10.0.0.2", ("a",)) and plain != ("10.0.0.1",)
    assert isinstance(full, Endpoint) and len({plain, full, Endpoint("10.0.0.1", ("a",))}) == 2
    assert (plain.ttl_seconds, plain.expires_at, plain.instance_id) == (None, None, None)
    assert not plain.expired(1e12) and full.expired(100.0) and not full.expired(99.0)
    assert full.renewed(200.0) == Endpoint("10.0.0.1", ("a",), 30, 200.0, "web-1")
    assert plain.tagged(("b",)) == Endpoint("10.0.0.1", ("b",))
    for endpoint, field in ((plain, "ip"), (plain, "expires_at"), (full, "expires_at")):
        with pytest.raises(FrozenInstanceError):
            setattr(endpoint, field, None)
        with pytest.raises(FrozenInstanceError):
            delattr(endpoint, field)
    assert repr(full) == (
        "Endpoint(ip='10.0.0.1', tags=('a',), ttl_seconds=30, expires_at=100.0, "
        "instance_id='web-1')"
    )
    assert pickle.loads(pickle.dumps(full)) == full
    assert pickle.loads(pickle.dumps(plain)) == plain
    match full:
        case Endpoint(ip, tags, ttl, expires_at, instance_id):
            assert (ip, tags, ttl, expires_at, instance_id) == (
                "10.0.0.1",
                ("a",),
                30,
                100.0,
                "web-1",
            )


def test_an_endpoint_without_lease_or_instance_id_holds_two_fields() -> None:
    """The bound a million endpoints rely on: 48 bytes without a lease or an instance ID (it
    was 72 as a dataclass of five fields), 72 with them."""
    assert sys.getsizeof(Endpoint("10.0.0.1")) <= 48
    assert sys.getsizeof(Endpoint("10.0.0.1", ("a",), 30, 1.0)) <= 72
    assert sys.getsizeof(Endpoint("10.0.0.1", instance_id="web-1")) <= 72
