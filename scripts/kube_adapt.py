"""The rendered dev overlay turned into what podman 4.3 can play on one machine (scripts/kube.py).

`adapt()` is pure: from the objects `kubectl kustomize` renders it makes a Plan (the Pods to play
in order, each with the ConfigMaps and claims it uses, the Service names it answers to on the
pod network, the podman secrets and host files to create) and a note, with its reason, for every
adaptation. What podman cannot do becomes its nearest equivalent; what the manifests mean for
the containers (command, args, env values, secrets, probes, securityContext, read-only root,
uid/gid, resources, mounts) is kept, which tests/test_containers.py checks field by field.

    kubectl kustomize k8s/overlays/dev | python scripts/kube_adapt.py   # the notes, the Pods
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

Doc = dict[str, Any]
Note = Callable[[str, str, str], None]  # (subject, what becomes what, why)
HostFile = tuple[bytes, int, int | None]  # content, mode, group

# Services of these types are reached from outside the cluster: here, their ports are published
# on a loopback address. ClusterIP Services are names on the pod network only.
EXTERNAL_SERVICE_TYPES = {"NodePort", "LoadBalancer"}
KEPT_KINDS = {"ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "Deployment", "Job"}
# Kinds left out, and why; any other kind is refused rather than silently dropped.
DROPPED_KINDS = {
    "Namespace": "podman has no namespaces: the names carry the overlay's suffix, and the pods "
    "share a network named after the Namespace",
    "PodDisruptionBudget": "nothing evicts pods on one machine",
    "NetworkPolicy": "podman enforces no network policies: the pods share one private network, "
    "and only the daemon's ports are published, on loopback",
}
# $(VAR) in an env value, as Kubernetes expands it; `$$` is a literal `$`.
REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class Play:
    """One `podman kube play`: a Pod with the ConfigMaps and claims it uses."""

    pod: str
    docs: list[Doc]  # the Pod last
    aliases: list[str]  # the Services selecting it: its names on the pod network
    ip: str  # its address on the pod network
    run_to_completion: bool  # a Job's Pod
    host_ip: str | None = None  # where its external Services' ports are published
    published: dict[str, int] = field(default_factory=dict)  # container port name -> host port

    @property
    def spec(self) -> Doc:
        return dict(self.docs[-1]["spec"])


@dataclass
class Plan:
    network: str
    plays: list[Play]
    secrets: dict[str, bytes]  # podman secrets to create: name -> content
    volumes: list[str]  # podman volumes the plays create (claims, per-pod emptyDirs)
    files: dict[str, HostFile]  # host files to write, by path (secret volumes)
    notes: list[str]


class AdaptError(Exception):
    """The manifests use something with no equivalent here."""


def namespace(docs: list[Doc]) -> str:
    """The one namespace of the objects, which names the pod network."""
    namespaces = {d["metadata"].get("namespace") for d in docs} - {None}
    if len(namespaces) > 1:
        raise AdaptError(f"objects in several namespaces: {sorted(namespaces)}")
    return namespaces.pop() if namespaces else "default"


def adapt(
    docs: list[Doc],
    images: dict[str, str],
    host_ips: list[str],
    volume_dir: str,
    subnet: str,
    replicas: dict[str, int] | None = None,
) -> Plan:
    """The Plan for `docs`. `images` maps an image as the manifests name it to the local image
    to run (no registry is reachable); replica i of a Deployment publishes its external
    Services' ports on host_ips[i]; secret volumes become directories under volume_dir; the
    Pods get fixed addresses in `subnet`, the pod network's; `replicas` overrides replica
    counts of Deployments, by name."""
    notes: list[str] = []

    def note(subject: str, change: str, reason: str) -> None:
        line = f"{subject}: {change} ({reason})"
        if line not in notes:
            notes.append(line)

    by_kind: dict[str, list[Doc]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    for kind, objects in by_kind.items():
        if kind in DROPPED_KINDS:
            for obj in objects:
                note(f"{kind} {obj['metadata']['name']}", "left out", DROPPED_KINDS[kind])
        elif kind not in KEPT_KINDS:
            raise AdaptError(f"{kind} {objects[0]['metadata']['name']}: no podman equivalent")

    def named(kind: str) -> dict[str, Doc]:
        return {d["metadata"]["name"]: d for d in by_kind.get(kind, [])}

    configmaps, secrets = named("ConfigMap"), named("Secret")
    claims = named("PersistentVolumeClaim")
    pods = [
        *(p for d in by_kind.get("Deployment", []) for p in deployment_pods(d, replicas, note)),
        *(job_pod(j, note) for j in by_kind.get("Job", [])),
    ]
    addresses = ipaddress.ip_network(subnet).hosts()
    for _ in range(9):  # the gateway and a few more, left to podman's own allocations
        next(addresses)

    plan = Plan(namespace(docs), [], {}, [], {}, notes)
    for name, spec, labels, replica, is_job in pods:
        play = Play(name, [], [], str(next(addresses)), is_job)
        for container in all_containers(spec):
            set_image(container, images, note)
        if not is_job:
            restart_policy(name, spec, note)
        pod_ip(name, spec, play.ip, note)
        readiness_probes(name, spec, note)
        plan.secrets |= env_secrets(spec, secrets, note)
        plan.secrets |= expand_references(name, spec, configmaps, secrets, note)
        plan.files |= secret_volumes(name, spec, secrets, volume_dir, note)
        plan.volumes += own_empty_dirs(name, spec, note)
        for service in by_kind.get("Service", []):
            if selects(service, labels):
                play.aliases.append(service["metadata"]["name"])
                if service["spec"].get("type", "ClusterIP") in EXTERNAL_SERVICE_TYPES:
                    if replica >= len(host_ips):
                        raise AdaptError(f"{name}: no host address for replica {replica}")
                    play.host_ip = host_ips[replica]
                    play.published |= publish(service, name, spec, play.host_ip, note)
                else:
                    note(
                        f"Service {service['metadata']['name']} (ClusterIP)",
                        f"a name of {name} on the pod network",
                        "podman's network DNS instead of a cluster IP",
                    )
        unpublished_ports(name, spec, note)
        play.docs = [configmaps[c] for c in sorted(configmaps_used(spec)) if c in configmaps]
        # podman keeps a ConfigMap mounted as a volume in a volume of that name: removed at down
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in plan.volumes:
                plan.volumes.append(v["configMap"]["name"])
        for claim in claims_used(spec):
            if claim not in plan.volumes:  # created by the first play that claims it
                play.docs.append(claims[claim])
                plan.volumes.append(claim)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}}
        play.docs.append(pod | {"spec": spec})
        plan.plays.append(play)
    # podman runs a pod's init containers when it is played, and waits for them: Pods without
    # any first (the database), then the Jobs, then the Pods whose init containers wait for them.
    plan.plays.sort(key=lambda p: 1 if p.run_to_completion else 2 if has_init(p) else 0)
    return plan


PodSource = tuple[str, Doc, dict[str, str], int, bool]  # name, spec, labels, replica, is a Job's


def deployment_pods(
    deployment: Doc, replicas: dict[str, int] | None, note: Note
) -> Iterator[PodSource]:
    name = deployment["metadata"]["name"]
    count = (replicas or {}).get(name, deployment["spec"].get("replicas", 1))
    pods = [f"{name}-{i}" for i in range(count)]
    note(
        f"Deployment {name}",
        f"played as the Pod{'s' * (count > 1)} {', '.join(pods)}",
        "podman 4.3 would give all Pods of a Deployment the same host ports",
    )
    template = deployment["spec"]["template"]
    for replica, pod in enumerate(pods):
        labels = dict(template["metadata"].get("labels", {}))
        yield pod, copy.deepcopy(template["spec"]), labels, replica, False


def job_pod(job: Doc, note: Note) -> PodSource:
    name = job["metadata"]["name"]
    note(
        f"Job {name}",
        "a Pod run to completion, kept until kube-down",
        "podman plays no Jobs; backoffLimit and ttlSecondsAfterFinished have no equivalent: "
        "podman restarts a failed container without limit",
    )
    template = job["spec"]["template"]
    labels = dict(template["metadata"].get("labels", {}))
    return name, copy.deepcopy(template["spec"]), labels, 0, True


def all_containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def has_init(play: Play) -> bool:
    return bool(play.spec.get("initContainers"))


def set_image(container: Doc, images: dict[str, str], note: Note) -> None:
    image = container["image"]
    if image in images:
        container["image"] = images[image]
        container["imagePullPolicy"] = "Never"
        note(
            f"image {image}",
            f"{images[image]}, never pulled",
            "no registry: the image `make image` built, or its local stand-in",
        )


def restart_policy(pod: str, spec: Doc, note: Note) -> None:
    spec.setdefault("restartPolicy", "Always")  # a Deployment's only one
    if spec.get("initContainers"):
        spec["restartPolicy"] = "OnFailure"
        note(
            f"Pod {pod}",
            "restartPolicy OnFailure instead of a Deployment's Always",
            "podman 4.3 gives init containers the pod's restart policy: with Always, an init "
            "container that exits 0 is restarted until kube play fails",
        )


def readiness_probes(pod: str, spec: Doc, note: Note) -> None:
    for container in spec["containers"]:
        if "readinessProbe" in container:
            note(
                f"Pod {pod}",
                f"readinessProbe of {container['name']} kept, not run",
                "podman 4.3 runs no readiness probes; kube-up polls the published httpGet "
                "ones from the host, and nothing here routes by readiness",
            )


def pod_ip(pod: str, spec: Doc, ip: str, note: Note) -> None:
    """fieldRef status.podIP -> the Pod's fixed address."""
    for container in all_containers(spec):
        for var in container.get("env", []):
            if var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                del var["valueFrom"]
                var["value"] = ip
                note(
                    f"Pod {pod}",
                    f"env {var['name']} (fieldRef status.podIP) is its address {ip}",
                    "podman 4.3 supports no status fields; kube-up gives the Pod this address",
                )


def env_secrets(spec: Doc, secrets: dict[str, Doc], note: Note) -> dict[str, bytes]:
    """The podman secrets the environment refers to, in the form podman 4.3 reads there (a JSON
    object of base64 values): kube play would store a Secret of the YAML in another."""
    names: set[str] = set()
    for container in all_containers(spec):
        names |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
        for var in container.get("env", []):
            if "secretKeyRef" in var.get("valueFrom", {}):
                names.add(var["valueFrom"]["secretKeyRef"]["name"])
    for name in sorted(names):
        note(
            f"Secret {name}",
            "created with `podman secret create` for the environment",
            "podman 4.3's kube play stores a Secret in a form its env references cannot read",
        )
    return {name: json.dumps(secrets[name].get("data", {})).encode() for name in sorted(names)}


def expand_references(
    pod: str, spec: Doc, configmaps: dict[str, Doc], secrets: dict[str, Doc], note: Note
) -> dict[str, bytes]:
    """Kubernetes' $(VAR) expansion of env values, done here as the kubelet does it (against
    envFrom and the env before; an undefined reference stays as written), since podman 4.3
    passes them on unexpanded. A value taking in a Secret's value is moved into a podman secret
    of its own (returned), so that no Secret value is written in the plays."""
    created: dict[str, bytes] = {}
    for container in all_containers(spec):
        secret_name = f"{pod}-{container['name']}-env"
        known: dict[str, tuple[str, bool]] = {}  # name -> (value, holds a Secret's value)
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                data = configmaps[source["configMapRef"]["name"]].get("data", {})
                known |= {k: (v, False) for k, v in data.items()}
            else:
                data = secrets[source["secretRef"]["name"]].get("data", {})
                known |= {k: (base64.b64decode(v).decode(), True) for k, v in data.items()}
        moved: dict[str, str] = {}
        for var in container.get("env", []):
            source = var.get("valueFrom", {})
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                known[var["name"]] = (configmaps[ref["name"]]["data"][ref["key"]], False)
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                value = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
                known[var["name"]] = (value, True)
            if "value" not in var:
                continue
            used = [m[1] for m in REFERENCE.finditer(var["value"]) if m[1] in known]
            expanded = expand(var["value"], {k: v for k, (v, _) in known.items()})
            holds_secret = any(known[name][1] for name in used)
            known[var["name"]] = (expanded, holds_secret)
            if expanded == var["value"]:
                continue
            if holds_secret:
                moved[var["name"]] = expanded
                del var["value"]
                var["valueFrom"] = {"secretKeyRef": {"name": secret_name, "key": var["name"]}}
            else:
                var["value"] = expanded
            note(
                f"Pod {pod}",
                f"$(VAR) references in env {var['name']} expanded"
                + (f", into the podman secret {secret_name}" if holds_secret else ""),
                "podman 4.3 passes them on unexpanded"
                + ("; the value holds a Secret's" if holds_secret else ""),
            )
        for field_name in ("command", "args"):
            for word in container.get(field_name, []):
                if REFERENCE.search(word):
                    raise AdaptError(f"{pod}: $(VAR) in {field_name} is not adapted: {word}")
        if moved:
            data = {k: base64.b64encode(v.encode()).decode() for k, v in moved.items()}
            created[secret_name] = json.dumps(data).encode()
    return created


def expand(value: str, env: dict[str, str]) -> str:
    return REFERENCE.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), value)


def secret_volumes(
    pod: str, spec: Doc, secrets: dict[str, Doc], volume_dir: str, note: Note
) -> dict[str, HostFile]:
    """Each secret volume as a host directory of its files, mounted (hostPath) read-only, as the
    kubelet writes them on its node: mode defaultMode, group fsGroup. Returns the files."""
    files: dict[str, HostFile] = {}
    group = spec.get("securityContext", {}).get("fsGroup")
    for volume in spec.get("volumes", []):
        if "secret" not in volume:
            continue
        source = volume.pop("secret")
        directory = f"{volume_dir}/{pod}-{volume['name']}"
        mode = source.get("defaultMode", 0o644)
        data = secrets[source["secretName"]].get("data", {})
        for item in source.get("items") or [{"key": k, "path": k} for k in data]:
            content = base64.b64decode(data[item["key"]])
            files[f"{directory}/{item['path']}"] = (content, item.get("mode", mode), group)
        volume["hostPath"] = {"path": directory, "type": "Directory"}
        for container in all_containers(spec):
            for mount in container.get("volumeMounts", []):
                if mount["name"] == volume["name"] and not mount.get("readOnly"):
                    raise AdaptError(f"{pod}: secret volume {volume['name']} mounted writable")
        note(
            f"Pod {pod}",
            f"secret volume {volume['name']} ({source['secretName']}) is the host directory "
            f"{directory}, files mode {mode:o}, group {group}",
            "podman 4.3's kube play fails on a secret volume (a nil pointer dereference)",
        )
    return files


def own_empty_dirs(pod: str, spec: Doc, note: Note) -> list[str]:
    """Renames each emptyDir to `<pod>-<volume>`; returns the new names."""
    renamed: dict[str, str] = {}
    for volume in spec.get("volumes", []):
        if "emptyDir" in volume:
            renamed[volume["name"]] = f"{pod}-{volume['name']}"
            note(
                f"Pod {pod}",
                f"emptyDir {volume['name']} is the volume {renamed[volume['name']]}",
                "podman 4.3 makes an emptyDir a named volume, shared by all pods naming one "
                "alike; kube-down removes it",
            )
            if volume["emptyDir"]:
                note(
                    f"Pod {pod}",
                    f"emptyDir {volume['name']}: {volume['emptyDir']} not applied",
                    "podman 4.3 puts every emptyDir on disk, unbounded",
                )
            volume["name"] = renamed[volume["name"]]
    for container in all_containers(spec):
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
    return list(renamed.values())


def selects(service: Doc, labels: dict[str, str]) -> bool:
    selector = service["spec"].get("selector")
    return bool(selector) and selector.items() <= labels.items()


def publish(service: Doc, pod: str, spec: Doc, host_ip: str, note: Note) -> dict[str, int]:
    """The Service's ports as host ports, on host_ip, of the container ports they target."""
    published: dict[str, int] = {}
    for port in service["spec"]["ports"]:
        protocol = port.get("protocol", "TCP")
        target = port.get("targetPort", port["port"])
        for container in spec["containers"]:
            for cport in container.get("ports", []):
                if cport.get("protocol", "TCP") == protocol and target in (
                    cport.get("name"),
                    cport["containerPort"],
                ):
                    cport |= {"hostIP": host_ip, "hostPort": port["port"]}
                    published[cport.get("name", str(cport["containerPort"]))] = port["port"]
    ports = ", ".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in service["spec"]["ports"])
    note(
        f"Service {service['metadata']['name']} ({service['spec']['type']})",
        f"ports {ports} of {pod} published on {host_ip}",
        "no nodes here: the Service's own ports, on a loopback address only",
    )
    return published


def unpublished_ports(pod: str, spec: Doc, note: Note) -> None:
    """Drops the containerPorts no external Service publishes (probes naming one get its
    number): podman would publish them on every address."""
    for container in spec["containers"]:
        ports = container.get("ports", [])
        dropped = [p for p in ports if "hostPort" not in p]
        if not dropped:
            continue
        numbers = {p["name"]: p["containerPort"] for p in dropped if "name" in p}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            for action in container.get(probe, {}).values():
                if isinstance(action, dict) and action.get("port") in numbers:
                    action["port"] = numbers[action["port"]]
        container["ports"] = [p for p in ports if "hostPort" in p]
        if not container["ports"]:
            del container["ports"]
        note(
            f"Pod {pod}",
            f"containerPort {', '.join(str(p['containerPort']) for p in dropped)} not published",
            "podman 4.3 publishes a containerPort without hostPort on 0.0.0.0, where the "
            "host's own server may listen; other pods reach it on the pod network",
        )


def configmaps_used(spec: Doc) -> set[str]:
    names = {v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
    for container in all_containers(spec):
        names |= {
            s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s
        }
        for var in container.get("env", []):
            if "configMapKeyRef" in var.get("valueFrom", {}):
                names.add(var["valueFrom"]["configMapKeyRef"]["name"])
    return names


def claims_used(spec: Doc) -> list[str]:
    return [
        v["persistentVolumeClaim"]["claimName"]
        for v in spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    ]


def main() -> None:
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    plan = adapt(docs, {}, ["127.0.0.1"], volume_dir="/tmp/kube-play", subnet="10.89.0.0/24")
    for line in plan.notes:
        print(f"adapt: {line}", file=sys.stderr)
    yaml.safe_dump_all([d for play in plan.plays for d in play.docs], sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
