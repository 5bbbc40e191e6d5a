"""This replica's state as `/ready` reports it: one value, built by app.py, rendered by the
HTTP front-end (the JSON body of `/ready`, which the dashboard's header and operators read).

`ready` keeps the meaning probes rely on (200 = serve me): the copy is loaded and the replica is
not draining. A database outage does not make it false: the copy keeps serving from memory, and
the other fields say how current that copy is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool  # the copy is loaded and we are not draining (also while the database is away)
    draining: bool  # SIGTERM received: leaving the load balancers
    database_up: bool  # the LISTEN connection is established and the write pool is open
    copy_live: bool  # loaded and hearing every change; else it may lag the database
    stale_seconds: float  # since the copy was last known current (0 while live)
    version: int  # the registry version the copy holds

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "draining": self.draining,
            "database": "up" if self.database_up else "down",
            "copy": "live" if self.copy_live else "stale",
            "stale_seconds": round(self.stale_seconds, 3),
            "version": self.version,
        }
