"""The end of a load put into the registry copy service by service (`sync` streams the snapshot
and `Registry.apply`s each service as its rows arrive, so the loop keeps serving meanwhile):
what `Registry.replace_all` does after putting everything, for a copy filled that way.

Kept apart from registry.py, which is at its size limit; it reaches into the registry's parts
(its services, expiry and announcer) as replace_all does, and nothing else does.
"""

from __future__ import annotations

from collections.abc import Collection

from service_discovery.registry import Registry


def finish_load(registry: Registry, version: int, keys: Collection[str]) -> None:
    """Every service of a snapshot at registry `version` is in the copy (those named `keys`,
    put by `apply`, or newer ones already held): drop what the snapshot no longer has, apply
    the global mass-expiry guard to every lease at once, mark the copy loaded (`/ready`), move
    the registry version to `version` (and through our own writes past it), and tell everyone
    that anything may have changed."""
    gone = [key for key in registry._entries if key not in keys]
    for key in gone:  # a service re-created by our own write since the snapshot is kept
        registry.apply(version, key, None)
    registry._expiry.refresh_guard()
    registry.loaded = True
    registry.advance(version)
    registry._expiry.schedule()
    registry._changes.announce(None, "reload")
