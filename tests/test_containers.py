"""The image and the dev overlay, run for real. `make image` builds the Dockerfile (with podman and
local base stand-ins where no Docker engine or registry answers); `KUBE_REPLICAS=2 make kube-up`
plays k8s/overlays/dev with podman; then the host talks to the pods as a user would: /ready, the
README's transcript with curl and dig, gRPC health, the daemon's user and root filesystem, a
second replica, and kube-down's drain. These tests are marked `containers` (CI runs them; minutes
on a fresh machine, about one with cached base images) and skipped, with the reason, where podman
cannot run.

The tests of the adapter (scripts/kube_adapt.py) need no podman: it keeps what the manifests mean.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import http_status
from test_k8s import all_containers, app_deployment, data_of, named, pod_spec, render, resolve_env
from test_k8s import workloads as k8s_workloads
from test_readme import TRANSCRIPT, command, quick_start_block

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import kube_adapt  # noqa: E402

STATE = REPO / ".kube-play"
IMAGE = "localhost/service-discovery:dev"
REPLICAS = ["127.0.0.1", "127.0.0.2"]  # where each replica of the daemon publishes its ports
HTTP, DNS, GRPC = 3000, 8053, 8081  # the NodePort Service's ports, published as they are
TOKEN = (REPO / "k8s/overlays/dev/api-tokens.txt").read_text().split()[0]
# The manifests serve a zone of the daemon's own (README: Names inside the cluster), not the
# design's svc.cluster.local that the quick start shows: the transcript's names are moved there.
ZONE = next(
    line.split("=", 1)[1].strip()
    for line in (REPO / "k8s/base/default.env").read_text().splitlines()
    if line.startswith("DNS_DOMAIN=")
)


def in_zone(text: str) -> str:
    return text.replace("svc.cluster.local", ZONE)


# podman reads the same configuration as `make` gives it.
ENV = os.environ | {"CONTAINERS_CONF": str(REPO / "scripts/containers.conf")}


def run(*argv: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    """argv's output (stdout and stderr); the test fails, showing its end, if it fails."""
    result = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=env or ENV,
        cwd=REPO,
    )
    assert result.returncode == 0, f"{shlex.join(argv)}: exit {result.returncode}\n" + "\n".join(
        result.stdout.splitlines()[-40:]
    )
    return result.stdout


def podman(*args: str) -> str:
    return run("podman", *args)


def inspect(container: str, template: str) -> str:
    return podman("inspect", container, "--format", template).strip()


def podman_time(value: str) -> float:
    """A podman timestamp (2026-11-29 15:00:21.641126836 +0000 UTC) as epoch seconds."""
    day, clock, offset = value.split()[:3]
    clock = clock[:15] if "." in clock else clock  # microseconds at most
    stamp = datetime.strptime(f"{day} {clock} {offset}", "%Y-%m-%d %H:%M:%S.%f %z")
    return stamp.timestamp()


# --- podman, the image, the pods -------------------------------------------------------------


def containers(test: Any) -> Any:
    """Marked `containers`, with room for the setup: the first test that needs the image or the
    pods builds or plays them (minutes on a fresh machine)."""
    return pytest.mark.timeout(1800)(pytest.mark.containers(test))


@pytest.fixture(scope="module")
def podman_runs() -> None:
    """podman installed (as `make image` installs it) and able to run here; else a skip."""
    deps = subprocess.run(
        ["bash", "-c", ". scripts/engine.sh && need_podman"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ENV,
    )
    if deps.returncode != 0:
        pytest.skip(f"podman is missing and cannot be installed here: {deps.stderr.strip()}")
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, env=ENV)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")


@pytest.fixture(scope="module")
def image(podman_runs: None) -> str:
    """`make image`; its output."""
    return run("make", "image", timeout=1800)


@dataclass
class Kube:
    """`KUBE_REPLICAS=2 make kube-up` and what the host saw of /ready meanwhile."""

    output: str = ""
    ready_at: float | None = None  # when the first replica's /ready first answered 200
    statuses: list[int | None] = field(default_factory=list)  # what it answered before


@pytest.fixture(scope="module")
def kube(image: str) -> Iterator[Kube]:
    for host in REPLICAS:
        for port in (HTTP, GRPC):
            assert http_status(f"http://{host}:{port}/", timeout=0.5) is None, (
                f"something listens on {host}:{port}: it would answer for the pods"
            )
    seen = Kube()
    playing = threading.Event()

    def watch_ready() -> None:
        # the host's view of the first replica's readiness, from before kube-up
        while playing.is_set():
            status = http_status(f"http://{REPLICAS[0]}:{HTTP}/ready", timeout=0.5)
            if status == 200:
                seen.ready_at = time.time()
                return
            seen.statuses.append(status)
            time.sleep(0.05)

    playing.set()
    watcher = threading.Thread(target=watch_ready, daemon=True)
    watcher.start()
    try:
        seen.output = run(
            "make", "kube-up", timeout=600, env=ENV | {"KUBE_REPLICAS": str(len(REPLICAS))}
        )
        watcher.join(timeout=10)
        yield seen
    finally:
        playing.clear()
        if (STATE / "plan.json").exists():  # test_kube_down_drains_each_daemon did not run
            subprocess.run(["make", "kube-down"], cwd=REPO, env=ENV, capture_output=True)


def daemon_containers() -> list[str]:
    return [f"service-discovery-dev-{i}-service-discovery" for i in range(len(REPLICAS))]


@containers
def test_image_adds_the_virtualenv_and_the_user_only(image: str) -> None:
    """1. `make image` builds from the Dockerfile with a base given as PYTHON_IMAGE (the
    official image or its stand-in); 2. over that base, the image adds /opt/venv and the user's
    entries in /etc: nothing of the machine's pip configuration or CA bundle, which the build
    had as secrets; 3. it runs as 10001:10001, both with names."""
    base = re.search(r"building service-discovery:dev with PYTHON_IMAGE=(\S+)", image)
    assert base, image
    changed = {line.split()[1] for line in podman("image", "diff", IMAGE, base[1]).splitlines()}
    user_files = {f"/etc/{f}{s}" for f in ("passwd", "group", "shadow", "gshadow") for s in "-"}
    user_files |= {f"/etc/{f}" for f in ("passwd", "group", "shadow", "gshadow")}
    outside = {p for p in changed if not p.startswith("/opt/venv/")}
    assert outside <= {"/etc", "/opt", "/opt/venv", *user_files}, sorted(outside)
    out = podman("run", "--rm", "--read-only", "--entrypoint", "id", IMAGE)
    assert out.split() == [
        "uid=10001(service-discovery)",
        "gid=10001(service-discovery)",
        "groups=10001(service-discovery)",
    ]


@containers
def test_dev_stage_imports_the_synced_sources(image: str) -> None:
    """The Tiltfile's stage: Python imports the package from /app/src, where Tilt syncs."""
    tag = "service-discovery:dev-stage"
    run("make", "image", env=ENV | {"TARGET": "dev", "IMAGE": tag}, timeout=600)
    try:
        code = "import service_discovery; print(service_discovery.__file__)"
        out = podman("run", "--rm", "--entrypoint", "python", tag, "-c", code)
        assert out.strip() == "/app/src/service_discovery/__init__.py", out
    finally:
        podman("rmi", tag)


@containers
def test_ready_only_after_the_migrations(kube: Kube) -> None:
    """/ready, polled from the host since before kube-up, answered 200 only after the
    migrations Job's container had finished with exit code 0 (the daemon's init container waits
    for it), and every replica is ready."""
    job = "service-discovery-migrate-dev-migrate"
    assert inspect(job, "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"
    assert kube.ready_at is not None and kube.statuses, kube
    assert podman_time(inspect(job, "{{.State.FinishedAt}}")) < kube.ready_at
    assert 200 not in kube.statuses
    for host in REPLICAS:
        assert http_status(f"http://{host}:{HTTP}/ready") == 200
    assert re.search(r"service-discovery-dev-0 ready: .*, [\d.]+ s after kube-up", kube.output)


@containers
def test_only_loopback_ports_are_published(kube: Kube) -> None:
    """The daemon's HTTP, DNS (UDP and TCP) and gRPC ports, on 127.0.0.1 for the first replica
    and 127.0.0.2 for the second; nothing else, and nothing on another address (PostgreSQL's
    5432 stays on the pod network: the host's own server holds it)."""
    published = set()
    for name in podman("ps", "--format", "{{.Names}}").split():
        bindings = json.loads(podman("inspect", name))[0]["HostConfig"]["PortBindings"] or {}
        for port, hosts in bindings.items():
            published |= {(h["HostIp"], h["HostPort"], port) for h in hosts}
    expected = {
        (host, str(port), f"{port}/{protocol}")
        for host in REPLICAS
        for port, protocol in ((HTTP, "tcp"), (DNS, "udp"), (DNS, "tcp"), (GRPC, "tcp"))
    }
    assert published == expected


@containers
def test_the_readme_transcript_against_the_pods(kube: Kube) -> None:
    """The quick start's curl and dig lines, run as written against the published ports (the
    dev overlay requires the token from its Secret for writes); every dig over UDP and TCP."""
    lines = quick_start_block()
    status = shlex.split("curl -s -o /dev/null -w %{http_code}")
    unauthorized = run(*status, "-XPUT", f"http://127.0.0.1:{HTTP}/service", "-d", "{}")
    assert unauthorized == "401"
    ran = []
    for i, line in enumerate(lines):
        argv = shlex.split(line)
        if argv[0] == "curl":
            auth = ["-H", f"Authorization: Bearer {TOKEN}"]
            code = run(*argv, *auth, *status[1:])
            assert code.startswith("2"), (line, code)
            ran.append(command(line))
        elif argv[0] == "dig":
            argv = shlex.split(in_zone(line))
            expected = in_zone(lines[i + 1]).lstrip("# ").split()
            for transport in ("+notcp", "+tcp"):
                answers: list[list[str]] = []
                deadline = time.monotonic() + 10  # the registration reaches DNS asynchronously
                while expected not in answers and time.monotonic() < deadline:
                    out = run(*argv, transport, "+noall", "+answer")
                    answers = [ln.split() for ln in out.splitlines() if ln.strip()]
                    time.sleep(0.1)
                assert expected in answers, (line, transport, answers)
            ran.append(command(line))
    assert ran == TRANSCRIPT


@containers
def test_grpc_health_is_serving(kube: Kube) -> None:
    for host in REPLICAS:
        with grpc.insecure_channel(f"{host}:{GRPC}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, host


@containers
def test_daemon_runs_as_uid_10001_on_a_read_only_root(kube: Kube) -> None:
    """The daemon's process, seen from the host: uid and gid 10001, no capabilities, not PID 1
    of its PID namespace (the pod shares it with the pause process); it cannot write its root
    filesystem, /tmp (an emptyDir) it can."""
    for container in daemon_containers():
        pid = inspect(container, "{{.State.Pid}}")
        status = Path(f"/proc/{pid}/status").read_text()
        fields = {k: v.split() for k, v in (ln.split(":", 1) for ln in status.splitlines())}
        assert fields["Uid"] == ["10001"] * 4 and fields["Gid"] == ["10001"] * 4, fields
        assert int(fields["CapEff"][0], 16) == 0 and int(fields["CapBnd"][0], 16) == 0
        assert fields["NSpid"][-1] != "1", fields["NSpid"]
        assert "serve" in Path(f"/proc/{pid}/cmdline").read_text()
        assert inspect(container, "{{.HostConfig.ReadonlyRootfs}}") == "true"
        write = subprocess.run(
            ["podman", "exec", container, "sh", "-c", "touch /probe; touch /tmp/probe"],
            capture_output=True,
            text=True,
            env=ENV,
        )
        assert "Read-only file system" in write.stderr and "/tmp/probe" not in write.stderr


@containers
def test_a_second_replica_sees_a_write_made_through_the_first(kube: Kube) -> None:
    first, second = (f"http://{host}:{HTTP}" for host in REPLICAS)
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]
    run("curl", "-fsS", *auth, "-XPUT", f"{first}/service", "-d", '{"name": "replicated"}')
    run(
        "curl",
        "-fsS",
        *auth,
        "-XPUT",
        f"{first}/service/replicated/register",
        "-d",
        '{"ip": "10.1.2.3", "tags": []}',
    )
    deadline = time.monotonic() + 10
    while True:
        out = run("dig", "+short", f"-p{DNS}", f"@{REPLICAS[1]}", f"replicated.{ZONE}")
        if out.split() == ["10.1.2.3"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert out.split() == ["10.1.2.3"]
    assert '"replicated"' in run("curl", "-fsS", f"{second}/services")


@containers
def test_postgres_standin_runs_the_initdb_scripts(image: str, tmp_path: Path) -> None:
    """The stand-in for the official postgres image (built when that cannot be pulled) does what
    the manifests rely on: the user, password and database from the environment, and the
    /docker-entrypoint-initdb.d scripts (*.sql; *.sh run when executable, else sourced) once, in
    name order, as uid 999 on a read-only root."""
    standin = re.search(r"PostgreSQL for the dev overlay: (\S+)", image)
    assert standin, image
    if "standin" not in standin[1]:
        pytest.skip(f"{standin[1]} is the official image: no stand-in was built")
    scripts = tmp_path / "initdb"
    scripts.mkdir()
    (scripts / "10-role.sql").write_text("CREATE ROLE reader LOGIN;\n")
    (scripts / "20-table.sh").write_text(
        '#!/bin/sh\npsql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" '
        "-c 'CREATE TABLE made_by_sh (n int)'\n"
    )
    (scripts / "20-table.sh").chmod(0o755)
    (scripts / "30-sourced.sh").write_text('echo "sourced with POSTGRES_DB=$POSTGRES_DB"\n')
    scripts.chmod(0o755)
    name = "sd-test-postgres-standin"
    # as the dev overlay runs it: uid 999, read-only root, the writable directories mounted
    options = (
        "--user 999:999 --read-only --tmpfs /tmp"
        " --mount type=volume,destination=/run/postgresql"
        " --mount type=volume,destination=/var/lib/postgresql/data"
        " -e PGDATA=/var/lib/postgresql/data/pgdata -e POSTGRES_USER=sd"
        " -e POSTGRES_PASSWORD=secret -e POSTGRES_DB=service_discovery"
    )
    initdb = f"{scripts}:/docker-entrypoint-initdb.d:ro"
    podman("run", "-d", "--name", name, *options.split(), "-v", initdb, standin[1])
    try:
        deadline = time.monotonic() + 60
        while (
            "initialised" not in podman("logs", name)
            or subprocess.run(
                ["podman", "exec", name, "pg_isready", "-h", "127.0.0.1", "-U", "sd"],
                capture_output=True,
                env=ENV,
            ).returncode
        ):
            assert time.monotonic() < deadline, podman("logs", name)
            time.sleep(0.2)
        query = (
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = 'reader'), "
            "to_regclass('made_by_sh') IS NOT NULL"
        )
        out = podman(
            "exec",
            name,
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "sd",
            "-d",
            "service_discovery",
            "-Atc",
            query,
        )
        assert out.strip() == "1|t", out
        logs = podman("logs", name)
        assert "sourced with POSTGRES_DB=service_discovery" in logs, logs
    finally:
        subprocess.run(["podman", "rm", "-f", "-v", name], capture_output=True, env=ENV)


@containers
def test_kube_down_drains_each_daemon(kube: Kube) -> None:
    """`make kube-down`: each daemon gets SIGTERM, answers /ready 503 while it drains, and exits
    0 within terminationGracePeriodSeconds; its log (kept in .kube-play/logs) shows the drain.
    Then nothing of the play is left."""
    docs = render("overlays/dev")
    grace = pod_spec(app_deployment(docs))["terminationGracePeriodSeconds"]
    during: list[int | None] = []
    stopping = threading.Event()

    def watch() -> None:
        while not stopping.is_set():
            during.append(http_status(f"http://{REPLICAS[0]}:{HTTP}/ready", timeout=0.5))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = run("make", "kube-down", timeout=grace * 3 + 60)
    finally:
        stopping.set()
        watcher.join()
    assert 503 in during, during
    for container in daemon_containers():
        match = re.search(rf"{container} exited with code (\d+), ([\d.]+) s after", out)
        assert match and match[1] == "0" and float(match[2]) < grace, out
        log = (STATE / "logs" / f"{container}.log").read_text()
        for line in ("signal SIGTERM: shutting down", "draining for", "stopped"):
            assert line in log, log
    assert not (STATE / "plan.json").exists()
    left = podman("ps", "-a", "--format", "{{.Names}}").split()
    assert not [n for n in left if n.startswith(("service-discovery-", "postgres-dev"))], left
    assert not [n for n in podman("volume", "ls", "--format", "{{.Name}}").split() if "-dev" in n]


# --- the adapter, without podman ---------------------------------------------------------------

SUBNET = "10.89.0.0/24"


def adapted(replicas: int = 2) -> tuple[list[dict[str, Any]], kube_adapt.Plan]:
    docs = render("overlays/dev")
    plan = kube_adapt.adapt(
        docs,
        images={"service-discovery:dev": IMAGE},
        host_ips=REPLICAS[:replicas],
        volume_dir="/volumes",
        subnet=SUBNET,
        replicas={app_deployment(docs)["metadata"]["name"]: replicas},
    )
    return docs, plan


def podman_env(container: dict[str, Any], play: kube_adapt.Play, plan: kube_adapt.Plan) -> dict:
    """The environment podman 4.3 gives the adapted container: envFrom, then env in order, with
    no $(VAR) expansion; secretKeyRef read from the podman secrets the plan creates."""
    configmaps = {d["metadata"]["name"]: d for d in play.docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= configmaps[source["configMapRef"]["name"]]["data"]
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            secret = json.loads(plan.secrets[ref["name"]])
            env[var["name"]] = base64.b64decode(secret[ref["key"]]).decode()
        else:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = configmaps[ref["name"]]["data"][ref["key"]]
    return env


def test_adapter_keeps_what_the_manifests_mean() -> None:
    """For every container of every workload, in every Pod the plan plays: the same command,
    args, resources, securityContext (the Pod's too), probes (a named port may become its
    number), mounts and grace period, and the environment the kubelet would give it (Secrets,
    ConfigMaps, $(VAR) expansion, the Pod's IP); only the image is replaced, by the local one."""
    docs, plan = adapted()
    plays = {p.pod: p for p in plan.plays}
    for workload in k8s_workloads(docs):
        name = workload["metadata"]["name"]
        pods = [p for n, p in plays.items() if n == name or re.fullmatch(rf"{name}-\d+", n)]
        count = 1 if workload["kind"] == "Job" else workload["spec"].get("replicas", 1)
        count = len(REPLICAS) if workload is app_deployment(docs) else count
        assert len(pods) == count, (name, list(plays))
        original = pod_spec(workload)
        for play in pods:
            for key in POD_KEPT:
                assert play.spec.get(key) == original.get(key), (play.pod, key)
            mine = {c["name"]: c for c in all_containers(play.spec)}
            assert list(mine) == [c["name"] for c in all_containers(original)]
            for container in all_containers(original):
                other, where = mine[container["name"]], (play.pod, container["name"])
                for key in CONTAINER_KEPT:
                    assert other.get(key) == container.get(key), (*where, key)
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    assert without_ports(other.get(probe)) == without_ports(container.get(probe))
                assert mounts(other) == mounts(container), where
                kubelet = resolve_env(container, docs, pod_ip=play.ip)
                assert podman_env(other, play, plan) == kubelet, where
                local = IMAGE if container["image"] == "service-discovery:dev" else None
                assert other["image"] == (local or container["image"]), where
    assert plan.network == "service-discovery-dev"


POD_KEPT = ("securityContext", "terminationGracePeriodSeconds", "shareProcessNamespace")
CONTAINER_KEPT = ("command", "args", "resources", "securityContext", "envFrom")


def without_ports(probe: dict[str, Any] | None) -> dict[str, Any] | None:
    """A probe but for its port, which the adapter may turn from a name into its number."""
    if probe is None:
        return None
    return {k: v | {"port": None} if isinstance(v, dict) else v for k, v in probe.items()}


def mounts(container: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(m["mountPath"], m.get("readOnly", False)) for m in container.get("volumeMounts", [])]


def test_adapter_writes_no_secret_into_the_plays() -> None:
    """Secret values reach the containers through podman secrets and 0440 files owned by the
    fsGroup, never as text in the played YAML (the $(VAR) expansion included)."""
    docs, plan = adapted()
    values = {v for s in docs if s["kind"] == "Secret" for v in data_of(s).values()}
    for play in plan.plays:
        text = json.dumps(play.docs)
        for value in values:
            assert value.strip() not in text, play.pod
    [volume] = [v for v in pod_spec(app_deployment(docs))["volumes"] if "secret" in v]
    tokens = data_of(named(docs, "Secret", volume["secret"]["secretName"]))["tokens"]
    files = {p: f for p, f in plan.files.items() if p.endswith("/tokens")}
    assert len(files) == 2 and all(f == (tokens.encode(), 0o440, 10001) for f in files.values())


def test_adapter_publishes_on_loopback_only_and_orders_the_plays() -> None:
    """Every published port has a loopback hostIP, one replica per address; PostgreSQL's port is
    not published; the database is played first, the Job next, the daemons last."""
    _, plan = adapted()
    for play in plan.plays:
        for container in play.spec["containers"]:
            for port in container.get("ports", []):
                assert port.get("hostIP") in REPLICAS, (play.pod, port)
    assert {p.host_ip for p in plan.plays if p.published} == set(REPLICAS)
    assert [p.pod for p in plan.plays] == [
        "postgres-dev-0",
        "service-discovery-migrate-dev",
        "service-discovery-dev-0",
        "service-discovery-dev-1",
    ]
    assert plan.plays[0].aliases == ["postgres-dev"]


def test_adapter_notes_every_adaptation_and_refuses_the_unknown() -> None:
    """Each adaptation is noted with its reason; a kind with no equivalent is refused."""
    docs, plan = adapted()
    for subject in (
        "Namespace",
        "Job",
        "Service service-discovery-nodeport-dev (NodePort)",
        "restartPolicy OnFailure",
        "secret volume api-tokens",
        "status.podIP",
        "$(VAR) references in env DATABASE_URL",
        "emptyDir tmp",
        "{'medium': 'Memory', 'sizeLimit': '16Mi'} not applied",
        "readinessProbe of service-discovery kept, not run",
        "containerPort 5432 not published",
        "image service-discovery:dev",
    ):
        assert any(subject in line for line in plan.notes), subject
    assert all(line.endswith(")") and " (" in line for line in plan.notes)
    stateful = {"kind": "StatefulSet", "metadata": {"name": "db"}}
    with pytest.raises(kube_adapt.AdaptError, match="StatefulSet db"):
        kube_adapt.adapt([*docs, stateful], {}, REPLICAS, "/volumes", SUBNET)
