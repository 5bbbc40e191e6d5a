"""`Endpoint`, one endpoint of a service, as compact as a million of them need (a type of the
model: imported from `service_discovery.model` like the others)."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

_set = object.__setattr__


class Endpoint:
    """One endpoint of a service: frozen, equal to another with the same fields.

    A registry copy holds a million of them, most without a lease or an instance ID: those are
    held in 48 bytes (two fields); `Endpoint(...)` gives the others, which need all five
    (72 bytes), as `_FullEndpoint`. Either is an `Endpoint`, and reads the same.
    """

    __slots__ = ("ip", "tags")
    __match_args__ = ("ip", "tags", "ttl_seconds", "expires_at", "instance_id")
    ip: str
    tags: tuple[str, ...]
    # Read here by the endpoints without them; `_FullEndpoint`'s slots shadow these.
    ttl_seconds: int | None = None
    expires_at: float | None = None  # unix time; None = no lease
    # The ID a client gave at registration (Consul's ServiceID), unique across the registry;
    # None for endpoints registered natively, whose Consul ID is derived (consul_model).
    instance_id: str | None = None

    def __new__(
        cls,
        ip: str,
        tags: tuple[str, ...] = (),
        ttl_seconds: int | None = None,
        expires_at: float | None = None,
        instance_id: str | None = None,
    ) -> Endpoint:
        if ttl_seconds is None and expires_at is None and instance_id is None:
            self = object.__new__(Endpoint)
        else:
            self = object.__new__(_FullEndpoint)
            _set(self, "ttl_seconds", ttl_seconds)
            _set(self, "expires_at", expires_at)
            _set(self, "instance_id", instance_id)
        _set(self, "ip", ip)
        _set(self, "tags", tags)
        return self

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def renewed(self, expires_at: float) -> Endpoint:
        """This endpoint with its lease running to `expires_at`."""
        return Endpoint(self.ip, self.tags, self.ttl_seconds, expires_at, self.instance_id)

    def tagged(self, tags: tuple[str, ...]) -> Endpoint:
        """This endpoint with the tags `tags` (an equal tuple: the copy shares one)."""
        return Endpoint(self.ip, tags, self.ttl_seconds, self.expires_at, self.instance_id)

    def _fields(self) -> tuple[object, ...]:
        return (self.ip, self.tags, self.ttl_seconds, self.expires_at, self.instance_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Endpoint(ip={self.ip!r}, tags={self.tags!r}, ttl_seconds={self.ttl_seconds!r}, "
            f"expires_at={self.expires_at!r}, instance_id={self.instance_id!r})"
        )

    def __reduce__(self) -> tuple[type[Endpoint], tuple[object, ...]]:
        return Endpoint, self._fields()

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


class _FullEndpoint(Endpoint):
    """An endpoint with a lease or an instance ID (see `Endpoint`)."""

    __slots__ = ("expires_at", "instance_id", "ttl_seconds")
