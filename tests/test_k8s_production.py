"""The production side of the manifests: the ha overlay (CloudNativePG Cluster, spread replicas,
PodDisruptionBudget), secrets kept out of git, the NetworkPolicies, the zone of the daemon's own
and the dev database's roles, created by the init script against a real PostgreSQL."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import pytest
from test_k8s import (
    DEPLOYABLE,
    K8S,
    SECRET_FILES,
    app_deployment,
    data_of,
    kustomize,
    main_container,
    named,
    objects,
    pod_spec,
    render,
    resolve_env,
    write_secrets,
)

from service_discovery import migrate
from service_discovery.config import Config


# --- secrets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", sorted(SECRET_FILES))
def test_rendering_fails_without_the_secret_files(overlay: str, tmp_path: Path) -> None:
    """No fallback to development values: without the operator's files, no manifests."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets"))
    result = kustomize(copy / overlay)
    assert result.returncode != 0
    assert "secrets/" in result.stderr, result.stderr
    write_secrets(copy)
    assert kustomize(copy / overlay).returncode == 0


def test_no_secret_in_git_but_dev() -> None:
    """The only Secret sources in the tree are the dev overlay's; git ignores the others."""
    generators = {
        p.parent.relative_to(K8S).as_posix()
        for p in K8S.rglob("kustomization.yaml")
        if "secretGenerator" in p.read_text()
    }
    assert generators == {"overlays/dev", *SECRET_FILES}
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", f"k8s/{next(iter(SECRET_FILES))}/secrets/api-tokens.txt"],
        cwd=K8S.parent,
    )
    assert ignored.returncode == 0, "k8s/overlays/*/secrets/ must be git-ignored"

    def secret_values(kustomization: str) -> set[str]:
        docs = render(kustomization)
        return {
            v for s in objects(docs, "Secret") for k, v in data_of(s).items() if k != "username"
        }

    dev = secret_values("overlays/dev")
    for overlay in SECRET_FILES:
        assert not secret_values(overlay) & dev, f"{overlay} uses a development secret"


# --- the ha overlay ------------------------------------------------------------------------------
def _cluster(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [cluster] = objects(docs, "Cluster")
    return cluster


def test_ha_cluster_is_synchronous_and_names_its_secrets() -> None:
    """The fields of the CloudNativePG Cluster we rely on (kubernetes-validate has no schema for
    the CRD): apiVersion, three instances, quorum synchronous replication, instances on distinct
    nodes, the owner and runtime roles from Secrets that exist and are hashed."""
    docs = render("overlays/ha")
    cluster = _cluster(docs)
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert set(spec) <= {"instances", "imageName", "primaryUpdateStrategy", "postgresql",
                         "bootstrap", "managed", "storage", "affinity", "resources"}  # fmt: skip
    assert spec["instances"] == 3
    assert spec["postgresql"]["synchronous"] == {"method": "any", "number": 1}
    assert ":" in spec["imageName"] and not spec["imageName"].endswith(":latest")
    assert spec["affinity"]["podAntiAffinityType"] == "required"
    initdb = spec["bootstrap"]["initdb"]
    owner = data_of(named(docs, "Secret", initdb["secret"]["name"]))
    assert owner["username"] == initdb["owner"]
    [role] = spec["managed"]["roles"]
    runtime = data_of(named(docs, "Secret", role["passwordSecret"]["name"]))
    assert runtime["username"] == role["name"] and role["login"] and not role["superuser"]
    # The daemon logs in as that role, through the Cluster's read-write Service.
    env = resolve_env(main_container(app_deployment(docs)), docs)
    url = urlsplit(env["DATABASE_URL"])
    assert url.hostname == f"{cluster['metadata']['name']}-rw"
    assert (url.username, url.password) == (runtime["username"], runtime["password"])
    assert url.path == "/" + initdb["database"]


def test_ha_replicas_spread_and_budget() -> None:
    docs = render("overlays/ha")
    deployment = app_deployment(docs)
    assert deployment["spec"]["replicas"] == 3
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pod = pod_spec(deployment)
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert "topology.kubernetes.io/zone" in spread
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    [pdb] = objects(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


# --- least privilege -----------------------------------------------------------------------------
def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    ok = selector.get("matchLabels", {}).items() <= labels.items()
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        ok = ok and labels.get(expr["key"]) in expr["values"]
    return ok


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_network_policy_of_the_daemon(kustomization: str) -> None:
    """DNS from any Pod; HTTP and gRPC from Pods labelled service-discovery/client=true; out to
    PostgreSQL and DNS only. No service account token in the Pod."""
    docs = render(kustomization)
    deployment = app_deployment(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_spec(deployment)["automountServiceAccountToken"] is False
    [policy] = [
        p for p in objects(docs, "NetworkPolicy") if _selects(p["spec"]["podSelector"], labels)
    ]
    spec = policy["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    client = {"service-discovery/client": "true"}
    stranger = {"app": "web"}

    def allowed(port: int, protocol: str, peer: dict[str, str]) -> bool:
        for rule in spec["ingress"]:
            if {"port": port, "protocol": protocol} not in rule["ports"]:
                continue
            for source in rule["from"]:
                if "namespaceSelector" in source and _selects(source.get("podSelector", {}), peer):
                    return True
        return False

    for protocol in ("UDP", "TCP"):
        assert allowed(8053, protocol, stranger)
    for port in (3000, 8081):
        assert allowed(port, "TCP", client) and not allowed(port, "TCP", stranger)
    out = {(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]}
    assert out == {("TCP", 5432), ("UDP", 53), ("TCP", 53)}


@pytest.mark.parametrize("kustomization", ["overlays/dev", "overlays/ha"])
def test_postgres_accepts_only_the_daemon_and_the_migrations(kustomization: str) -> None:
    docs = render(kustomization)
    daemon = app_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in objects(docs, "NetworkPolicy") if p["metadata"]["name"] != (
        app_deployment(docs)["metadata"]["name"])]  # fmt: skip
    [policy] = policies
    [rule] = [r for r in policy["spec"]["ingress"] if "namespaceSelector" not in r["from"][0]]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    peers = [f["podSelector"] for f in rule["from"]]
    assert any(_selects(p, daemon) for p in peers)
    assert any(_selects(p, {"component": "migrations"}) for p in peers)
    assert not any(_selects(p, {"app": "web"}) for p in peers)


# --- names inside the cluster --------------------------------------------------------------------
@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_manifests_serve_a_zone_of_their_own(kustomization: str) -> None:
    docs = render(kustomization)
    env = resolve_env(main_container(app_deployment(docs)), docs)
    assert Config.from_env(env).dns_domain == "sd.internal"
    assert Config().dns_domain == "svc.cluster.local"  # the daemon's default stays


def test_coredns_snippet_forwards_the_zone() -> None:
    text = (K8S / "coredns/sd-internal.server").read_text()
    body = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert "sd.internal:53 {" in body
    assert "forward . SERVICE_IP:8053 {" in body


# --- the dev database's roles, created by the init script ----------------------------------------
def test_initdb_script_creates_both_roles(database_url: str, tmp_path: Path) -> None:
    """1. run k8s/postgres/initdb-roles.sh as the postgres image would (psql as a superuser, the
    roles' names and passwords in its environment) for a new database; 2. migrate as the
    migration role; 3. the runtime role reads and writes the registry but cannot create a
    table."""
    psql = shutil.which("psql") or next(
        iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))), None
    )
    if psql is None:
        pytest.skip("psql is not installed")
    admin = urlsplit(database_url)
    suffix = uuid.uuid4().hex[:8]
    db, mig, run = f"sd_init_{suffix}", f"sd_migrate_{suffix}", f"sd_runtime_{suffix}"
    mig_pw, run_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    subprocess.run([psql, database_url, "-qc", f'CREATE DATABASE "{db}"'], check=True)
    script = tmp_path / "initdb-roles.sh"
    script.write_text((K8S / "postgres/initdb-roles.sh").read_text())
    env = {
        **os.environ,
        "PATH": f"{Path(psql).parent}:{os.environ['PATH']}",
        # the embedded server's URL names a unix socket directory (?host=/dir), not a host
        "PGHOST": admin.hostname or parse_qs(admin.query).get("host", ["127.0.0.1"])[0],
        "PGPORT": str(admin.port or 5432),
        "PGPASSWORD": admin.password or "",
        "POSTGRES_USER": admin.username or "postgres",
        "POSTGRES_DB": db,
        "SD_MIGRATE_USER": mig,
        "SD_MIGRATE_PASSWORD": mig_pw,
        "SD_RUNTIME_USER": run,
        "SD_RUNTIME_PASSWORD": run_pw,
    }

    def url(user: str, password: str) -> str:
        if env["PGHOST"].startswith("/"):
            query = f"host={env['PGHOST']}&port={env['PGPORT']}"
            return urlunsplit(("postgresql", f"{user}:{password}@", f"/{db}", query, ""))
        host = f"{env['PGHOST']}:{env['PGPORT']}"
        return urlunsplit(("postgresql", f"{user}:{password}@{host}", f"/{db}", "", ""))

    try:
        result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert migrate.apply(url(mig, mig_pw))
        _check_runtime(url(run, run_pw))
    finally:
        drops = (f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', f'DROP ROLE IF EXISTS "{mig}"',
                 f'DROP ROLE IF EXISTS "{run}"')  # fmt: skip
        for statement in drops:
            subprocess.run([psql, database_url, "-qc", statement], capture_output=True)


def _check_runtime(url: str) -> None:
    import asyncio

    async def check() -> None:
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM services") == 0
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TABLE intruder (x int)")
        finally:
            await conn.close()

    asyncio.run(check())
