"""Every Prometheus metric, declared once: `sd_` prefix, one subsystem per front-end.

Each app instance owns its own CollectorRegistry (`collector_registry`: Prometheus' registry of
metrics, not the service registry), so two instances in one test process do not share counters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class _HttpStats(Collector):
    """sd_http_requests_total and sd_http_request_duration_seconds, kept as plain numbers:
    a prometheus_client child costs a lock per update, which showed on the hot read path."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], int] = {}
        self._latency: dict[str, list[float]] = {}  # route -> bucket counts..., +Inf, sum

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        hist = self._latency.get(route)
        if hist is None:
            hist = self._latency[route] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        hist[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        hist[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "sd_http_requests",
            "HTTP requests by route, method and status",
            labels=["route", "method", "status"],
        )
        for (route, method, status), n in sorted(self._counts.items()):
            counter.add_metric([route, method, str(status)], n)
        yield counter
        histogram = HistogramMetricFamily(
            "sd_http_request_duration_seconds", "HTTP request latency by route", labels=["route"]
        )
        bounds = [*(f"{b:g}" for b in _LATENCY_BUCKETS), "+Inf"]
        for route, hist in sorted(self._latency.items()):
            cumulative = list(accumulate(hist[:-1]))
            histogram.add_metric([route], list(zip(bounds, cumulative, strict=True)), hist[-1])
        yield histogram


class Metrics:
    def __init__(self) -> None:
        r = self.collector_registry = CollectorRegistry(auto_describe=True)
        self.before_render: list[Callable[[], None]] = []
        # HTTP
        # HTTP requests are counted in plain integers (the hot path) and exposed at scrape time
        self._http = _HttpStats()
        r.register(self._http)
        self.http_watches = Gauge(
            "sd_http_blocking_queries", "HTTP blocking queries waiting for a change", registry=r
        )
        self.http_encoded = Counter(
            "sd_http_encoded_bytes", "JSON bodies encoded for reads and blocking queries (each "
            "kept and shared by every reader until its state changes)", registry=r,
        )  # fmt: skip
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
        self.dns_limited = Counter(
            "sd_dns_limited_total",
            "DNS queries and connections a per-client or global limit acted on, by limit "
            "(misses, rrl, tcp_connections, tcp_per_client, tcp_write_timeout) and action",
            ["limit", "action"], registry=r,
        )  # fmt: skip
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
        self.grpc_watch_encoded = Counter(
            "sd_grpc_watch_encoded_bytes", "Watch messages encoded (each shared by every stream "
            "that sends it)", registry=r,
        )  # fmt: skip
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
        self.sync_rejected = Counter(
            "sd_sync_notifications_rejected",
            "NOTIFY payloads dropped because they are not what the daemon sends, by channel",
            ["channel"], registry=r,
        )  # fmt: skip
        self.sync_reads = Counter(
            "sd_sync_reads",
            "changes the sync read from the database because their notification did not carry "
            "them (too large, or a change the copy missed), by what it read",
            ["what"], registry=r,
        )  # fmt: skip
        for what in ("endpoint", "service"):
            self.sync_reads.labels(what)  # both series from the start, at 0
        self.sync_connected = Gauge(
            "sd_sync_listen_connected", "1 while the LISTEN connection is up", registry=r
        )
        self.sync_stale = Gauge(
            "sd_sync_stale_seconds",
            "seconds since the copy was last known current (0 while LISTEN is up)", registry=r,
        )  # fmt: skip
        self.store_errors = Counter(
            "sd_store_unavailable_total", "writes refused because the database was unavailable",
            registry=r,
        )  # fmt: skip
        self.internal_errors = Counter(
            "sd_internal_errors_total", "unexpected errors, by front-end", ["frontend"], registry=r
        )
        # group commit of writes
        self.write_batch_size = Histogram(
            "sd_write_batch_writes", "writes per batch written (group commit)",
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.write_commit_latency = Histogram(
            "sd_write_commit_duration_seconds", "time to write and commit one batch of writes",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.write_waiting = Gauge(
            "sd_write_waiting",
            "writes not committed yet (queued, or in the batch being written)",
            registry=r,
        )
        self.write_batch_retries = Counter(
            "sd_write_batch_retries_total",
            "batches that failed as a whole and were written one write at a time",
            registry=r,
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
        self.lease_sweeps = Counter(
            "sd_lease_sweeps_total",
            "reaper rounds: swept the database, or skipped (this copy knew of no lapsed lease)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("swept", "skipped"):
            self.lease_sweeps.labels(outcome)  # both series from the start, at 0
        self.lease_mass_expiry = Counter(
            "sd_lease_mass_expiry_total",
            "sweeps in which a mass-expiry guard renewed lapsed leases instead of deleting them",
            registry=r,
        )
        self.lease_self_preservation = Gauge(
            "sd_lease_self_preservation",
            "1 while the global mass-expiry guard holds",
            registry=r,
        )
        self.lease_guarded_services = Gauge(
            "sd_lease_guarded_services",
            "services whose lapsed endpoints this copy keeps (their own mass-expiry guard)",
            registry=r,
        )
        self.ready = Gauge("sd_ready", "1 when the replica is ready to serve", registry=r)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self._http.observe(route, method, status, seconds)

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
        return generate_latest(self.collector_registry)
