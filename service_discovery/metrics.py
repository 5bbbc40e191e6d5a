"""Every Prometheus metric, declared once: `sd_` prefix, one subsystem per front-end.

Each app instance owns its own CollectorRegistry, so two instances in one test process do not
share counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.before_render: list[Callable[[], None]] = []
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        # HTTP
        self.http_requests = Counter(
            "sd_http_requests_total", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.http_latency = Histogram(
            "sd_http_request_duration_seconds", "HTTP request latency by route",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.http_watches = Gauge(
            "sd_http_blocking_queries", "HTTP blocking queries waiting for a change", registry=r
        )
        # DNS
        self.dns_queries = Counter(
            "sd_dns_queries_total", "DNS queries by transport, type and rcode",
            ["transport", "qtype", "rcode"], registry=r,
        )  # fmt: skip
        self.dns_cache_hits = Counter(
            "sd_dns_cache_hits_total", "DNS answers from cache", registry=r
        )
        self.dns_cache_misses = Counter(
            "sd_dns_cache_misses_total", "DNS answers built from the registry", registry=r
        )
        self.dns_truncated = Counter(
            "sd_dns_truncated_total", "UDP answers sent with TC set", registry=r
        )
        self.dns_dropped = Counter(
            "sd_dns_dropped_total", "DNS packets dropped (too short or unparseable)", registry=r
        )
        self.dns_tcp_connections = Gauge(
            "sd_dns_tcp_connections", "open DNS TCP connections", registry=r
        )
        # gRPC
        self.grpc_calls = Counter(
            "sd_grpc_calls_total", "gRPC calls by method and status code",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.grpc_latency = Histogram(
            "sd_grpc_call_duration_seconds", "gRPC call latency by method",
            ["method"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.grpc_watches = Gauge("sd_grpc_watch_streams", "open gRPC Watch streams", registry=r)
        # registry copy and its sync with PostgreSQL
        self.registry_services = Gauge("sd_registry_services", "services in the copy", registry=r)
        self.registry_endpoints = Gauge(
            "sd_registry_endpoints", "live endpoints in the copy", registry=r
        )
        self.registry_version = Gauge(
            "sd_registry_version", "registry version of the copy", registry=r
        )
        self.sync_reconnects = Counter(
            "sd_sync_listen_reconnects_total", "LISTEN connection re-established", registry=r
        )
        self.sync_reloads = Counter(
            "sd_sync_full_reloads_total", "full reloads of the registry copy", registry=r
        )
        self.sync_connected = Gauge(
            "sd_sync_listen_connected", "1 while the LISTEN connection is up", registry=r
        )
        self.store_errors = Counter(
            "sd_store_unavailable_total", "writes refused because the database was unavailable",
            registry=r,
        )  # fmt: skip
        self.internal_errors = Counter(
            "sd_internal_errors_total", "unexpected errors, by front-end", ["frontend"], registry=r
        )
        # leases
        self.lease_heartbeats = Counter(
            "sd_lease_heartbeats_total", "lease renewals accepted", registry=r
        )
        self.lease_flushes = Counter(
            "sd_lease_flushes_total", "batched renewal statements written", registry=r
        )
        self.lease_flush_latency = Histogram(
            "sd_lease_flush_duration_seconds", "time to write one batch of renewals",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.lease_expired = Counter(
            "sd_lease_expired_total", "leased endpoints reaped after expiry", registry=r
        )
        self.lease_mass_expiry = Counter(
            "sd_lease_mass_expiry_total", "sweeps refused by the mass-expiry guard", registry=r
        )
        self.lease_self_preservation = Gauge(
            "sd_lease_self_preservation", "1 while expiry is suspended by the guard", registry=r
        )
        self.ready = Gauge("sd_ready", "1 when the replica is ready to serve", registry=r)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        # labels() costs a lock and a tuple hash per call; the children are kept here instead
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route),
            )
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def bind_registry(
        self,
        services: Callable[[], float],
        endpoints: Callable[[], float],
        version: Callable[[], float],
    ) -> None:
        """Registry gauges are computed at scrape time, never on the serving path."""
        self.registry_services.set_function(services)
        self.registry_endpoints.set_function(endpoints)
        self.registry_version.set_function(version)

    def render(self) -> bytes:
        for flush in self.before_render:
            flush()  # front-ends that count in plain integers on their hot path
        return generate_latest(self.registry)
