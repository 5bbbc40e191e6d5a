"""Register services over the HTTP API and write the matching zone file and dnsperf queries.

usage: populate.py HTTP_BASE SERVICES ENDPOINTS ZONE_FILE QUERY_FILE [DOMAIN]

Every service `bench-<i>` gets ENDPOINTS IPv4 endpoints and the named port http/tcp/8000. The
zone file holds exactly the records the daemon serves for them (A, SRV, SOA, NS), for knotd.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp


def addresses(i: int, count: int) -> list[str]:
    """Distinct addresses: endpoint k of service i is the (i * count + k)-th of 10.0.0.0/8."""
    out = []
    for k in range(count):
        n = i * count + k
        out.append(f"10.{n // 62500 % 250}.{n // 250 % 250}.{n % 250 + 1}")
    return out


async def populate(base: str, services: int, endpoints: int) -> None:
    gate = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(base_url=base) as http:

        async def put(path: str, body: object) -> None:
            async with gate:
                resp = await http.put(path, data=json.dumps(body))
                if resp.status not in (200, 201):
                    raise RuntimeError(f"PUT {path}: {resp.status} {await resp.text()}")

        async def one(i: int) -> None:
            name = f"bench-{i}"
            await put("/service", {"name": name, "attributes": {}})
            await put(f"/service/{name}/ports", {"http": {"protocol": "tcp", "port": 8000}})
            for ip in addresses(i, endpoints):
                await put(f"/service/{name}/register", {"ip": ip, "tags": []})

        await asyncio.gather(*(one(i) for i in range(services)))


def zone_file(services: int, endpoints: int, domain: str) -> str:
    lines = [
        f"$ORIGIN {domain}.",
        "$TTL 5",
        f"@ 5 IN SOA ns.{domain}. hostmaster.{domain}. 1 60 10 3600 5",
        f"@ 5 IN NS ns.{domain}.",
        "ns 5 IN A 127.0.0.1",
    ]
    for i in range(services):
        name = f"bench-{i}"
        lines.append(f"_http._tcp.{name} 5 IN SRV 1 1 8000 {name}.{domain}.")
        lines.extend(f"{name} 5 IN A {ip}" for ip in addresses(i, endpoints))
    return "\n".join(lines) + "\n"


def queries(services: int, domain: str) -> str:
    # Mixed: for every service one A and one SRV question, interleaved.
    out = []
    for i in range(services):
        out.append(f"bench-{i}.{domain} A")
        out.append(f"_http._tcp.bench-{i}.{domain} SRV")
    return "\n".join(out) + "\n"


def main() -> None:
    base, services, endpoints, zone_path, query_path = sys.argv[1:6]
    domain = sys.argv[6] if len(sys.argv) > 6 else "svc.cluster.local"
    n, k = int(services), int(endpoints)
    asyncio.run(populate(base, n, k))
    with open(zone_path, "w") as f:
        f.write(zone_file(n, k, domain))
    with open(query_path, "w") as f:
        f.write(queries(n, domain))


if __name__ == "__main__":
    main()
