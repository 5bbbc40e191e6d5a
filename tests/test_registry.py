"""The registry copy on its own (pure: no sockets, no database)."""

from __future__ import annotations

from service_discovery.config import Config
from service_discovery.model import Service, Snapshot
from service_discovery.registry import Registry


def _service(name: str, version: int) -> Service:
    return Service(f"id-{name}", name, {}, {}, (), version)


def test_deletions_of_ever_new_names_do_not_grow_the_copy_for_ever() -> None:
    """1. churn: 12,000 services created and deleted under new names; 2. the copy remembers
    the index of recent deletions (blocking queries on them) but forgets the oldest."""
    registry = Registry(Config())
    registry.replace_all(Snapshot(0, {}))
    version = 0
    for i in range(12_000):
        name = f"churn-{i}"
        version += 1
        registry.apply(version, name, _service(name, version))
        version += 1
        registry.apply(version, name, None)
    assert registry.service_count() == 0
    assert registry.index("churn-11999") == version
    assert registry.index("churn-0") == 0  # forgotten: the oldest go first
    assert sum(registry.index(f"churn-{i}") > 0 for i in range(12_000)) == 10_000
