"""Consul clients that nobody here wrote, against the daemon with write and read protection:
py-consul and python-consul2 (PyPI), the npm `consul` package, and HashiCorp's Consul API
double for the shapes of the answers. Each runs in a subprocess (the two Python clients provide
the same `consul` package, see tests/realclients.py); the daemon runs in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from realclients import JS_DIR, node_modules, python_consul2

from service_discovery.app import App, run_app
from service_discovery.config import Config

pytestmark = pytest.mark.asyncio
TOKEN = "client-token"
SCENARIO = Path(__file__).with_name("consul_client_scenario.py")


@pytest.fixture
async def protected(make_config: Callable[..., Config]) -> AsyncIterator[App]:
    async with run_app(make_config(api_tokens=TOKEN, protect_reads=True)) as started:
        yield started


async def _run(*cmd: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, (out.decode()[-2000:], err.decode()[-4000:])
    return json.loads(out.decode().strip().splitlines()[-1])


def _check_python_scenario(seen: dict[str, Any], name: str, port: int) -> None:
    print(f"{seen['version']}: {seen['woken']}")
    assert seen["leader"] == f"127.0.0.1:{port}"
    assert seen["services"] == ["primary"]
    assert seen["passing"] == [[f"{name}-1", 8080]]
    assert seen["checks"] == ["passing"]
    assert seen["blocked"] is True
    assert seen["woken"]["moved"] is True
    assert seen["woken"]["ids"] == [f"{name}-1", f"{name}-2"]
    assert seen["after"] == []


async def test_py_consul(protected: App, unique_name: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    seen = await _run(sys.executable, str(SCENARIO), str(protected.http_port), TOKEN, unique_name,
                      env=env)  # fmt: skip
    assert seen["version"].startswith("py-consul ")
    _check_python_scenario(seen, unique_name, protected.http_port)


async def test_python_consul2(protected: App, unique_name: str) -> None:
    target = python_consul2()
    env = {**os.environ, "PYTHONPATH": str(target)}
    seen = await _run(sys.executable, str(SCENARIO), str(protected.http_port), TOKEN, unique_name,
                      env=env)  # fmt: skip
    assert seen["client"].startswith(str(target)), seen["client"]
    assert seen["version"].startswith("python-consul2 ")
    _check_python_scenario(seen, unique_name, protected.http_port)


async def test_npm_consul(protected: App, unique_name: str) -> None:
    node_modules()
    seen = await _run("node", "consul_client.js", str(protected.http_port), TOKEN, unique_name,
                      cwd=JS_DIR)  # fmt: skip
    print(f"npm consul {seen['version']}: {seen['changes']}")
    assert seen["leader"] == f"127.0.0.1:{protected.http_port}"
    assert seen["services"] == ["primary"]
    assert seen["passing"] == [[f"{unique_name}-1", 8080]]
    first, second = seen["changes"]
    assert first["ids"] == [f"{unique_name}-1"]
    assert second["ids"] == [f"{unique_name}-1", f"{unique_name}-2"]
    assert int(second["index"]) > int(first["index"])
    assert seen["after"] == []


# Fields of ours that the API double's templates lack, each in Consul's API documentation
# (website/content/api-docs: health.mdx "List Service Instances", agent/service.mdx).
DOCUMENTED_EXTRAS = {
    "/v1/health/service": {"[].Service.TaggedAddresses", "[].Service.Weights",
                           "[].Service.Datacenter", "[].Service.Meta",
                           "[].Checks[].ServiceTags"},
    "/v1/agent/services": {"{}.TaggedAddresses", "{}.Weights", "{}.Datacenter"},
}  # fmt: skip


async def test_answers_have_the_api_doubles_shapes(protected: App, unique_name: str) -> None:
    """Where HashiCorp's API double has a route, our answer's fields have its names, letter
    case and JSON types; fields it lacks are ones Consul's documentation shows."""
    node_modules()
    base = f"http://127.0.0.1:{protected.http_port}"
    async with aiohttp.ClientSession(base_url=base, headers={"X-Consul-Token": TOKEN}) as http:
        body = {"Name": unique_name, "ID": f"{unique_name}-1", "Address": "10.60.0.1",
                "Port": 8080, "Tags": ["a"], "Meta": {"k": "v"},
                "Check": {"TTL": "30s"}}  # fmt: skip
        resp = await http.put("/v1/agent/service/register", data=json.dumps(body))
        assert resp.status == 200, await resp.text()
    routes = [f"/v1/health/service/{unique_name}", "/v1/catalog/datacenters",
              "/v1/status/leader", "/v1/agent/services"]  # fmt: skip
    report = await _run("node", "shape_check.js", str(protected.http_port), TOKEN, *routes,
                        cwd=JS_DIR)  # fmt: skip
    for route, found in report.items():
        print(route, found)
        assert found["types"] == [] and found["casing"] == [], (route, found)
        allowed = next((v for k, v in DOCUMENTED_EXTRAS.items() if route.startswith(k)), set())
        assert set(found["extra"]) <= allowed, (route, found["extra"])
    health = report[f"/v1/health/service/{unique_name}"]
    # what clients read is there: nothing of the double's Node, Service ID/Address/Port/Tags
    # or check fields is missing
    assert not [m for m in health["missing"] if m.startswith("[].Node.")], health["missing"]
    for field in ("ID", "Service", "Tags", "Address", "Port", "Meta"):
        assert f"[].Service.{field}" not in health["missing"]
    for field in ("CheckID", "Status", "ServiceID", "Node", "Type"):
        assert f"[].Checks[].{field}" not in health["missing"]
