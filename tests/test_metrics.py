"""Every metric's name follows Prometheus conventions, and /metrics parses as exposition text."""

from __future__ import annotations

import re

import aiohttp
from helpers import prometheus
from prometheus_client.parser import text_string_to_metric_families

from service_discovery.metrics import Metrics

_NAME = re.compile(
    r"^sd_(http|dns|grpc|registry|sync|store|internal|lease|write|ready)(_[a-z0-9]+)*$"
)
_UNITS = ("_seconds", "_bytes", "_total")
# Histograms of counted things name what they count, in the plural (Prometheus' own
# prometheus_tsdb_compaction_chunk_samples does so): there is no base unit to name.
_COUNTED = ("_writes",)


def test_metric_names_follow_conventions() -> None:
    families = list(prometheus(Metrics()).collect())
    assert len(families) > 20
    for family in families:
        name, kind = family.name, family.type
        assert _NAME.match(name), f"{name}: sd_ prefix, a subsystem, snake_case"
        assert family.documentation.strip(), f"{name} has no help text"
        if kind == "counter":
            # the client adds _total on exposition; the declared name must not repeat a unit
            assert not name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith(_UNITS[:2] + _COUNTED), f"{name}: a histogram names its unit"
        if kind == "gauge":
            assert not name.endswith("_total"), f"{name}: _total is for counters"
        for label in {lbl for s in family.samples for lbl in s.labels}:
            assert re.match(r"^[a-z][a-z0-9_]*$", label), f"{name}: label {label}"


async def test_metrics_endpoint_parses(http: aiohttp.ClientSession) -> None:
    await http.get("/services")
    text = await (await http.get("/metrics")).text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"sd_http_requests", "sd_registry_services", "sd_sync_listen_connected"} <= names
