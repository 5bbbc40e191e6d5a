"""The DNS front-end: the zone served over UDP and TCP, answered from the catalog.

The path of a query: `server` (sockets and their limits) hands the message to `handler`, which
serves a cached answer (`answers`) found by the query's exact bytes, or parses it (`wire`),
asks the pure `resolver` (which names exist and what they answer) through `zone` (the
catalog's reads and the indexes derived from them), and encodes the answer once (`wire`) for
`answers` to keep until a change makes it stale. `records` holds the types they share;
`counters` counts without slowing the hot path; `describe` asks the resolver about one
service's names for people (the dashboard). Nothing here touches the database.
"""

from service_discovery.dns.server import DnsServer

__all__ = ["DnsServer"]
