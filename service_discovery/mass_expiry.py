"""The mass-expiry rule (self-preservation): when too many leases lapse together, keep them.

One rule for the reaper (`Store.reap_expired`) and for every registry copy (`expiry.Expiry`), so
a copy never hides what the reaper keeps; it lives apart so that neither depends on the other.
The policy is told in the README ("Mass expiry: self-preservation").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

_K = TypeVar("_K")


def mass_expiry(expired: int, leased: int, share: float, minimum: int) -> bool:
    """Self-preservation: too large a share of leases lapsing together means the renewals were
    lost (a database or network outage), not that the instances died; keep them.

    Applied twice (`mass_expiry_guards`): to each service's leases, then to the leases of all
    the services it did not guard."""
    return leased >= max(minimum, 1) and expired > share * leased


def mass_expiry_guards(
    counts: Mapping[_K, tuple[int, int]], share: float, minimum: int
) -> tuple[set[_K], bool]:
    """Which services keep their lapsed leases, from each service's (expired, leased) counts,
    and whether every service does.

    First per service: a service whose own leases lapse en masse keeps them (its guard). Then
    once over the services left: if their lapsed leases together are a mass expiry, every
    service keeps them (the global guard; many small services losing their renewals at once is
    an outage too). So one service's leases (a large job that ended) never stop expiry
    elsewhere. `expiry.Expiry` keeps the same two steps incrementally."""
    guarded = {k for k, (exp, leased) in counts.items() if mass_expiry(exp, leased, share, minimum)}
    expired = sum(exp for k, (exp, _) in counts.items() if k not in guarded)
    leased = sum(n for k, (_, n) in counts.items() if k not in guarded)
    return guarded, mass_expiry(expired, leased, share, minimum)
