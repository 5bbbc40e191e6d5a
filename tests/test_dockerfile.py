"""The Dockerfile and the Tiltfile, checked without a Docker engine: hadolint, and the facts the
manifests and the daemon rely on (entrypoint, ports, a numeric non-root user, no compiler in the
final stage, a build context holding everything the wheel is built from)."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service_discovery.config import Config

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPILERS = {"gcc", "g++", "cc", "clang", "make", "build-essential", "python3-dev", "libpq-dev"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile: continuation lines joined, comments and
    parser directives dropped. Enough of the syntax for the files of this project."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            base, _, name = re.sub(r"--platform=\S+ ", "", rest).partition(" AS ")
            stages.append(Stage(base=base, name=name.strip() or None))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args, stages


def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def final_stage() -> Stage:
    return dockerfile()[1][-1]


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def hadolint(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "warning", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE.read_text())
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_warning() -> None:
    """hadolint is not a no-op here: an unpinned base image (DL3006/DL3007) fails."""
    result = hadolint("FROM python:latest\nRUN pip install aiohttp\n")
    assert result.returncode != 0 and "DL30" in result.stdout


def test_base_image_is_a_pinned_slim_python_argument() -> None:
    args, stages = dockerfile()
    image = args["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.\d+-slim(-\w+)?", image)
    assert match, f"{image}: an official slim Python image, pinned to a patch release"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(n) for n in re.findall(r"\d+", requires)[:2])
    assert (int(match[1]), int(match[2])) >= minimum, f"{image} is older than {requires}"
    names = {s.name for s in stages}
    for stage in stages:
        assert stage.base == "${PYTHON_IMAGE}" or stage.base in names, stage.base


def test_final_stage_runs_the_daemon() -> None:
    stage = final_stage()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert [json.loads(e) for e in stage.all("ENTRYPOINT")][-1] == ["service-discovery"]
    assert "service-discovery" in scripts
    assert [json.loads(c) for c in stage.all("CMD")][-1] == ["serve"]


def test_final_stage_exposes_the_daemon_ports() -> None:
    exposed = {
        p if "/" in p else p + "/tcp" for e in final_stage().all("EXPOSE") for p in e.split()
    }
    config = Config()
    assert exposed == {
        f"{config.dns_port}/udp",
        f"{config.dns_port}/tcp",
        f"{config.http_port}/tcp",
        f"{config.grpc_port}/tcp",
    }


def test_images_listen_on_every_interface() -> None:
    """The daemon's default bind address is loopback (safe on a shared host); in a container
    that is the container's own loopback, unreachable through any port mapping, so the final
    and the dev stage set BIND_ADDRESS=0.0.0.0 themselves."""
    assert Config().bind_address == "127.0.0.1"
    for stage in (final_stage(), *(s for s in dockerfile()[1] if s.name == "dev")):
        env = dict(re.findall(r"(\w+)=(\S+)", " ".join(stage.all("ENV"))))
        assert env.get("BIND_ADDRESS") == "0.0.0.0", stage.name or "final stage"


def test_final_stage_user_is_numeric_and_not_root() -> None:
    user = final_stage().all("USER")[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: numeric, for runAsNonRoot"
    assert all(int(part) != 0 for part in user.split(":"))


def test_final_stage_has_nothing_to_compile_with() -> None:
    _, stages = dockerfile()
    stage = final_stage()
    assert stage.base == "${PYTHON_IMAGE}", "the final stage starts from the slim base"
    words = {w for run in stage.all("RUN") for w in re.split(r"[\s;&|=]+", run)}
    assert not words & COMPILERS, f"the final stage installs {words & COMPILERS}"
    assert not any("pip" in run for run in stage.all("RUN")), "nothing is built in the final stage"
    builder_names = {s.name for s in stages[:-1]}
    for copy in stage.all("COPY"):
        if "--from=" in copy:
            source_stage, source = re.search(r"--from=(\S+) (\S+)", copy).groups()
            assert source_stage in builder_names and source == "/opt/venv", copy


def test_embedded_extra_is_not_installed() -> None:
    runs = " ".join(run for stage in dockerfile()[1] for run in stage.all("RUN"))
    assert "[embedded]" not in runs and "pgserver" not in runs


def test_final_stage_creates_the_user_and_group_of_its_user() -> None:
    """USER's uid and gid have /etc/passwd and /etc/group entries: `useradd --user-group` would
    give the group the next system gid (999), not the gid of USER and of runAsGroup."""
    stage = final_stage()
    uid, gid = stage.all("USER")[-1].split(":")
    runs = " ".join(stage.all("RUN"))
    assert re.search(rf"groupadd [^&;]*--gid {gid}\b", runs), runs
    assert re.search(rf"useradd [^&;]*--uid {uid} [^&;]*--gid {gid}\b", runs), runs


def test_dependencies_are_installed_before_the_sources_are_copied() -> None:
    """A change to the sources rebuilds from their COPY on: the step that downloads the
    dependencies comes before it, after copying only what names them; the steps after it
    download nothing (no dependencies, no isolated build environment)."""
    builder = dockerfile()[1][0]
    steps = [(kw, args) for kw, args in builder.instructions if kw in ("COPY", "RUN")]
    download = next(i for i, (kw, args) in enumerate(steps) if kw == "RUN" and "-r " in args)
    before = {src for kw, args in steps[:download] if kw == "COPY" for src in args.split()[:-1]}
    assert before <= {"pyproject.toml", "constraints.txt"}, before
    after = [args for kw, args in steps[download + 1 :] if kw == "RUN"]
    assert after, "no step builds the wheel"
    for run in after:
        assert "pip install" not in run or "--no-deps" in run, run
        assert "pip wheel" not in run or "--no-build-isolation" in run, run


def test_the_package_index_settings_are_build_secrets_only() -> None:
    """The step that downloads mounts the pip configuration and CA bundle that `make image`
    passes as build secrets (scripts/image.sh), the same ids; no instruction copies or sets
    them, so no layer holds them."""
    text = DOCKERFILE.read_text()
    mounted = set(re.findall(r"--mount=type=secret,id=([\w.-]+)", text))
    passed = set(re.findall(r'--secret "id=([\w.-]+),', (REPO / "scripts/image.sh").read_text()))
    assert mounted == passed == {"pip.conf", "ca-bundle"}, (mounted, passed)
    for stage in dockerfile()[1]:
        for run in stage.all("RUN"):
            if "-r " in run:
                assert all(f"id={secret}" in run for secret in mounted), run
        for keyword in ("COPY", "ADD", "ENV", "ARG"):
            for args in stage.all(keyword):
                assert not re.search(r"pip\.conf|cert|CA_BUNDLE|PIP_INDEX", args), args


def test_dev_stage_runs_the_synced_sources() -> None:
    """`python -m service_discovery` in the dev stage imports the sources Tilt syncs: the stage
    has no other copy of them (it does not start from the builder, whose working directory
    holds one) and works in the directory on PYTHONPATH."""
    [dev] = [s for s in dockerfile()[1] if s.name == "dev"]
    assert dev.base == "${PYTHON_IMAGE}", dev.base
    pythonpath = re.search(r"PYTHONPATH=(\S+)", " ".join(dev.all("ENV")))[1]
    assert dev.all("WORKDIR")[-1] == pythonpath


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context: the last matching rule
    wins, and a rule matching a parent directory matches what is inside (Docker's rules, for
    the patterns used here)."""
    excluded = False
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_wheel_is_built_from() -> None:
    """Everything hatchling reads (pyproject, readme, package, force-included migrations and
    protos) is in the build context and copied into the builder stage."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = [
        "pyproject.toml",
        project["project"]["readme"],
        *wheel["packages"],
        *wheel.get("force-include", {}),
    ]
    builder = dockerfile()[1][0]
    copied = {
        Path(src).as_posix().rstrip("/")
        for copy in builder.all("COPY")
        if "--from=" not in copy
        for src in copy.split()[:-1]
    }
    for path in needed:
        assert not dockerignore_excludes(path), f".dockerignore leaves out {path}"
        assert path in copied, f"the builder stage does not COPY {path}"
    assert "migrations" in wheel.get("force-include", {}), "migrations must be in the wheel"
    for private in (".venv", ".git", "tests", "k8s", ".data", "service_discovery/__pycache__"):
        assert dockerignore_excludes(private), f"{private} would be sent to the Docker daemon"


def project_requirements() -> dict[str, Requirement]:
    """Every dependency of pyproject.toml, extras included, by canonical name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    lines = [*project["dependencies"], *(line for extra in extras for line in extra)]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def constraints() -> dict[str, str]:
    """constraints.txt as canonical name -> pinned version."""
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        assert match, f"constraints.txt: {line!r} is not name==version"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match[2]
    return pins


def test_aiohttp_floor_has_the_slow_header_protection() -> None:
    """The HTTP server relies on aiohttp's keep-alive timer to close a connection whose request
    head never completes (slowloris: http_api.py, the hostile-clients test in test_faults.py).
    Before 3.14.4 the timer was armed only after a response, so such a connection stayed open for
    ever; 3.14.0 brought web.RequestKey, which http_api.py uses. A floor below would let an install
    resolve to a version without them."""
    allowed = project_requirements()["aiohttp"].specifier
    assert "3.14.3" not in allowed and "3.14.4" in allowed, allowed


def test_constraints_pin_every_dependency_and_every_install_uses_them() -> None:
    """1. constraints.txt pins each package once, name==version; 2. every dependency of the
    project (extras included) is pinned at a version pyproject.toml allows; 3. the image's and
    CI's (Makefile) installs of the project pass -c constraints.txt, which the build context
    holds; 4. this environment was installed from it: the versions tested are those pinned."""
    pins = constraints()
    for name, requirement in project_requirements().items():
        assert name in pins, f"{name} is not pinned: run make constraints"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement}: make constraints"
        )
    builder = dockerfile()[1][0]
    installs = [run for run in builder.all("RUN") if "pip install" in run]
    assert installs and all("-c constraints.txt" in run for run in installs), installs
    copied = {src for copy in builder.all("COPY") if "--from=" not in copy for src in copy.split()}
    assert "constraints.txt" in copied and not dockerignore_excludes("constraints.txt")
    makefile = (REPO / "Makefile").read_text()
    project_installs = re.findall(r"\$\(BIN\)/pip install [^\n]*'\.\[[^\n]*", makefile)
    assert project_installs, "no pip install of the project in the Makefile"
    assert all("-c constraints.txt" in line for line in project_installs), project_installs
    stale = {}
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if installed != version:
            stale[name] = (installed, version)
    assert not stale, f"installed != pinned (reinstall with make): {stale}"


def test_tiltfile_matches_the_dockerfile_and_the_dev_overlay() -> None:
    """The Tiltfile (Starlark, a Python subset) builds a stage that exists, syncs into the
    sources that stage puts on PYTHONPATH, and deploys the dev overlay's workloads."""
    text = (REPO / "Tiltfile").read_text()
    calls = {
        node.func.id: node
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    build = {k.arg: k.value for k in calls["docker_build_with_restart"].keywords}
    [stage] = [s for s in dockerfile()[1] if s.name == ast.literal_eval(build["target"])]
    pythonpath = re.search(r"PYTHONPATH=(\S+)", " ".join(stage.all("ENV")))[1]
    for sync in re.findall(r"sync\('([^']+)', '([^']+)'\)", text):
        assert (REPO / sync[0]).is_dir() and sync[1].startswith(pythonpath + "/"), sync
    overlay = ast.literal_eval(calls["kustomize"].args[0])
    rendered = subprocess.run(
        [tool("kubectl"), "kustomize", str(REPO / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    for name in re.findall(r"k8s_resource\('([^']+)'", text):
        assert f"\n  name: {name}\n" in rendered.stdout, f"{name} is not in {overlay}"
