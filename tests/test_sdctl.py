"""`sdctl`, the console script, against a real daemon: every command in both output formats
(tables that fit 80 columns, JSON equal to what the API returns), the exit code of each error
class, SD_ADDR/SD_TOKEN/--token-file, the `register --ttl` sidecar ending on SIGTERM and
SIGINT, `watch`, bash completion, and the README's quick-start lines.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Daemon
from replicas import SDCTL, closed_address, http_json, replica
from service_discovery_client import Client
from service_discovery_client.cli import EXIT_CODES, table

TOKEN = "sdctl-test-token"
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def daemon(
    new_database: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    log = tmp_path_factory.mktemp("sdctl") / "daemon.log"
    with new_database("sd_sdctl") as url, replica(url, log, SD_API_TOKENS=TOKEN) as d:
        yield d


@pytest.fixture
def name() -> str:
    return f"ctl-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sd(daemon: Daemon) -> Client:
    return Client(daemon.base, token=TOKEN)


def environment(daemon: Daemon, **extra: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SD_ADDR", "SD_TOKEN")}
    env.update({"SD_ADDR": daemon.base, "SD_TOKEN": TOKEN})
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(daemon: Daemon, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SDCTL, *args], capture_output=True, text=True, env=environment(daemon, **env), timeout=60
    )


def ok(daemon: Daemon, *args: str) -> str:
    done = run(daemon, *args)
    assert done.returncode == 0, (args, done.returncode, done.stderr)
    return done.stdout


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


# ---- help and exit codes -------------------------------------------------------------------------
def test_help_lists_commands_and_exit_codes(daemon: Daemon) -> None:
    out = ok(daemon, "--help")
    for usage in [
        "services",
        "service NAME",
        "create NAME [--attr K=V]...",
        "delete NAME",
        "ports NAME PORT...",
        "register NAME IP [--tag T]... [--ttl S]",
        "deregister NAME IP",
        "watch [NAME]",
        "resolve NAME PORT",
        "completion bash",
    ]:
        assert f"    {usage}" in out, usage
    codes = dict(re.findall(r"^  (\d)  (\w+)", out.split("exit codes:")[1], re.M))
    assert codes == {
        "0": "success",
        "1": "any",
        "2": "usage",
        "3": "not",
        "4": "conflict",
        "5": "authentication",
        "6": "unavailable",
    }
    assert "SD_ADDR" in out and "SD_TOKEN" in out
    assert {code for _, code, _ in EXIT_CODES} == {2, 3, 4, 5, 6}


def test_exit_code_per_error_class(daemon: Daemon, name: str, tmp_path: Path) -> None:
    """usage 2 (the command line, or input the daemon refuses), not found 3, conflict 4,
    auth 5, unavailable 6; the error goes to stderr with the daemon's code and message."""
    assert ok(daemon, "create", name).startswith(f"created service {name}")
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    cases: list[tuple[list[str], dict[str, str | None], int, str]] = [
        ([], {}, 2, "required: COMMAND"),
        (["frobnicate"], {}, 2, "invalid choice"),
        (["ports", name, "http=tcp"], {}, 2, "expected name=protocol/port"),
        (["create", name, "--attr", "novalue"], {}, 2, "expected k=v"),
        (["register", name, "10.0.0.1", "--ttl", "0"], {}, 2, "at least 1"),
        (["create", "Not_A_Label"], {}, 2, "sdctl: invalid_input: "),
        (["register", name, "not-an-ip"], {}, 2, "sdctl: invalid_input: "),
        (["service", f"{name}-none"], {}, 3, "sdctl: not_found: "),
        (["deregister", name, "10.0.0.9"], {}, 3, "sdctl: not_found: "),
        (["resolve", name, "http"], {}, 3, "no port named 'http'"),
        (["create", name], {}, 4, "sdctl: already_exists: "),
        (["delete", name], {"SD_TOKEN": None}, 5, "sdctl: unauthenticated: "),
        (["--token-file", str(wrong), "delete", name], {}, 5, "sdctl: unauthenticated: "),
        (["services"], {"SD_ADDR": closed_address()}, 6, "connection refused"),
        (["--addr", closed_address(), "service", name], {}, 6, "sdctl: unreachable: "),
    ]
    for args, env, code, message in cases:
        done = run(daemon, *args, **env)
        assert (done.returncode, done.stdout) == (code, ""), (args, done)
        assert message in done.stderr, (args, done.stderr)


def test_addr_token_and_token_file(daemon: Daemon, name: str, tmp_path: Path) -> None:
    """--addr beats SD_ADDR (and may be repeated for replicas); --token beats SD_TOKEN;
    --token-file reads the first non-blank line; the options go before or after the command."""
    token_file = tmp_path / "token"
    token_file.write_text(f"\n  {TOKEN}  \nignored\n")
    dead = closed_address()
    done = run(
        daemon, "--addr", dead, "--addr", daemon.base, "--token-file", str(token_file),
        "create", name, SD_ADDR=dead, SD_TOKEN="wrong",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run(daemon, "delete", name, "--token", TOKEN, "--addr", daemon.base, SD_TOKEN="wrong")
    assert done.returncode == 0, done.stderr
    both = run(daemon, "--token", "a", "--token-file", str(token_file), "services")
    assert both.returncode == 2 and "not allowed with argument --token" in both.stderr
    both = run(daemon, "--token", "a", "services", "--token-file", str(token_file))
    assert both.returncode == 2 and "exclude each other" in both.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n\n")
    done = run(daemon, "--token-file", str(empty), "services")
    assert done.returncode == 2 and "no token in" in done.stderr
    done = run(daemon, "--token-file", str(tmp_path / "missing"), "services")
    assert done.returncode == 2 and "--token-file" in done.stderr


# ---- every command, table and JSON ---------------------------------------------------------------
def test_commands_in_tables_and_json(daemon: Daemon, name: str) -> None:
    """create, ports, register, services, service, resolve, deregister, delete: the table says
    it in plain words, `-o json` prints exactly what the API returned."""
    created = json.loads(ok(daemon, "-o", "json", "create", name, "--attr", "team=a"))
    status, api = http_json(f"{daemon.base}/service/{name}")
    assert status == 200 and created == api

    out = ok(daemon, "ports", name, "http=tcp/8000", "grpc=tcp/9000:2:5")
    assert rows(out) == [
        ["PORT", "PROTOCOL", "NUMBER", "PRIORITY", "WEIGHT"],
        ["grpc", "tcp", "9000", "2", "5"],
        ["http", "tcp", "8000", "1", "1"],
    ]
    ports = json.loads(ok(daemon, "ports", name, "http=tcp/8000", "-o", "json"))
    assert ports == http_json(f"{daemon.base}/service/{name}")[1]["named_ports"]

    assert ok(daemon, "register", name, "10.8.0.1", "--tag", "canary", "--tag", "eu") == (
        f"registered 10.8.0.1 in {name}\n"
    )
    registered = json.loads(ok(daemon, "-o", "json", "register", name, "10.8.0.2"))
    assert registered == {"service_name": name, "ip": "10.8.0.2", "tags": []}

    listing = ok(daemon, "services")
    assert rows(listing)[0] == ["NAME", "PORTS", "ATTRIBUTES", "INDEX"]
    mine = [r for r in rows(listing) if r[0] == name]
    index = str(http_json(f"{daemon.base}/service/{name}")[1]["index"])
    assert mine == [[name, "grpc=tcp/9000:2:5,http=tcp/8000", "team=a", index]]
    assert (
        json.loads(ok(daemon, "services", "-o", "json")) == http_json(f"{daemon.base}/services")[1]
    )

    shown = ok(daemon, "service", name)
    assert rows(shown) == [
        ["name", name],
        ["index", index],
        ["attributes", "team=a"],
        ["ports", "grpc=tcp/9000:2:5,http=tcp/8000"],
        ["ENDPOINT", "TAGS", "LEASE"],
        ["10.8.0.1", "canary,eu", "-"],
        ["10.8.0.2", "-", "-"],
    ]
    assert (
        json.loads(ok(daemon, "-o", "json", "service", name))
        == (http_json(f"{daemon.base}/service/{name}")[1])
    )

    resolved = rows(ok(daemon, "resolve", name, "grpc"))
    assert resolved[0] == ["ADDRESS", "PORT"]
    assert sorted(resolved[1:]) == [["10.8.0.1", "9000"], ["10.8.0.2", "9000"]]
    as_json = json.loads(ok(daemon, "resolve", name, "http", "-o", "json"))
    assert sorted(as_json, key=lambda a: a["ip"]) == [
        {"ip": "10.8.0.1", "port": 8000},
        {"ip": "10.8.0.2", "port": 8000},
    ]

    assert ok(daemon, "deregister", name, "10.8.0.2") == f"deregistered 10.8.0.2 from {name}\n"
    assert ok(daemon, "-o", "json", "deregister", name, "10.8.0.1") == ""  # the API: 204
    assert ok(daemon, "service", name).rstrip().endswith("no live endpoints")
    assert ok(daemon, "delete", name) == f"deleted service {name}\n"
    assert http_json(f"{daemon.base}/service/{name}")[0] == 404


def test_tables_fit_in_80_columns(daemon: Daemon, sd: Client, name: str) -> None:
    """Long attributes, many ports, a leased endpoint with many tags: every line of every
    table is at most 80 characters, columns aligned, cut cells end in '...'."""
    attributes = {f"attribute-{i}": "x" * 40 for i in range(5)}
    sd.create_service(name, attributes=attributes)
    sd.set_ports(name, {f"p{i}": {"protocol": "tcp", "port": 8000 + i} for i in range(12)})
    sd.register(name, "2001:db8:ffff:ffff:ffff:ffff:ffff:1", tags=[f"tag-{i}" for i in range(20)])
    sd.register(name, "10.8.1.1", ttl=600)
    for args in (["services"], ["service", name], ["ports", name, "p0=tcp/8000"]):
        out = ok(daemon, *args)
        assert max(len(line) for line in out.splitlines()) <= 80, out
    shown = ok(daemon, "service", name)
    assert "..." in shown
    lease = next(line for line in shown.splitlines() if line.startswith("10.8.1.1"))
    assert re.search(r"600 s, \d+\.\d s left$", lease), lease
    sd.delete_service(name)


TABLE_CASES = [
    # (headers, rows, width) -> lines
    (["A", "BB"], [["x", "y"], ["long", "z"]], 80, ["A     BB", "x     y", "long  z"]),
    (["N", "V"], [["a", "0123456789abcdef"]], 14, ["N  V", "a  01234567..."]),
    (["NAME", "VALUE"], [], 80, ["NAME  VALUE"]),
]


@pytest.mark.parametrize(("headers", "body", "width", "lines"), TABLE_CASES)
def test_table_layout(
    headers: list[str], body: list[list[str]], width: int, lines: list[str]
) -> None:
    assert table(headers, body, width).splitlines() == lines


# ---- the sidecar ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_register_ttl_sidecar_renews_then_deregisters_on_signal(
    daemon: Daemon, sd: Client, name: str, sig: signal.Signals
) -> None:
    """1. `sdctl register NAME IP --ttl 2 --tag side` stays in the foreground; 2. the endpoint
    is registered with the lease and outlives several ttls (renewed); 3. on the signal it
    deregisters, says so and exits 0."""
    sd.create_service(name)
    proc = subprocess.Popen(
        [SDCTL, "register", name, "10.8.2.1", "--ttl", "2", "--tag", "side"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(daemon),
    )
    try:
        lines = LineReader(proc.stdout)
        first = lines.next(30)
        assert first.startswith(f"registered 10.8.2.1 in {name} with a 2 s lease"), first
        [endpoint] = sd.endpoints(name)
        assert (endpoint.ttl_seconds, endpoint.tags) == (2, ("side",))
        assert endpoint.expires_at is not None
        deadline = time.monotonic() + 30
        while time.time() < endpoint.expires_at + 2.5:  # past the first expiry, and again
            assert time.monotonic() < deadline
            assert [e.ip for e in sd.endpoints(name)] == ["10.8.2.1"]
            time.sleep(0.2)
        later = sd.endpoints(name)[0].expires_at
        assert later is not None and later > endpoint.expires_at
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
        assert lines.next(5) == f"deregistered 10.8.2.1 from {name} ({sig.name})"
        assert sd.endpoints(name) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# ---- watch ---------------------------------------------------------------------------------------
def test_watch_prints_create_register_lapse_delete(daemon: Daemon, sd: Client, name: str) -> None:
    """1. `sdctl watch NAME` before the service exists; 2. create; 3. register a 1 s lease
    nobody renews; 4. it lapses; 5. delete; each is printed as one line, in order; SIGTERM
    ends the watch with 0."""
    steps: list[tuple[str, Callable[[], object]]] = [
        (r"does not exist$", lambda: sd.create_service(name)),
        (r"created: live endpoints none$", lambda: sd.register(name, "10.8.3.1", ttl=1)),
        (r"registered 10\.8\.3\.1$", lambda: None),
        # the lapse (the index stays) or, if the reaper was quicker, the deletion of the row
        (r"(lapsed|removed) 10\.8\.3\.1$", lambda: sd.delete_service(name)),
        (r"deleted$", lambda: None),
    ]
    lines = watch_through(daemon, ["watch", name], steps)
    assert all(re.match(rf"\d\d:\d\d:\d\d  index (\d+|-)  {name}  ", ln) for ln in lines), lines


def test_watch_json_and_the_listing(daemon: Daemon, sd: Client, name: str) -> None:
    """`-o json watch NAME` prints one API answer per line (null while it does not exist);
    `watch` without a name follows the listing."""
    steps: list[tuple[str, Callable[[], object]]] = [
        (r"^null$", lambda: sd.create_service(name)),
        (rf'^\{{"id": .*"name": "{name}"', lambda: sd.register(name, "10.8.4.1")),
        (r'"ip": "10\.8\.4\.1"', lambda: None),
    ]
    lines = watch_through(daemon, ["-o", "json", "watch", name], steps)
    assert json.loads(lines[-1]) == http_json(f"{daemon.base}/service/{name}")[1]

    other = f"{name}-l"
    steps = [
        (r"index \d+  \d+ services?: ", lambda: sd.create_service(other)),
        (rf"created {other}$", lambda: sd.delete_service(other)),
        (rf"deleted {other}$", lambda: None),
    ]
    watch_through(daemon, ["watch"], steps)


# ---- completion ----------------------------------------------------------------------------------
def test_bash_completion(daemon: Daemon, sd: Client, name: str) -> None:
    """The script from `sdctl completion bash` completes commands, options (global and the
    command's), option values, and service names asked of the daemon."""
    sd.create_service(name)
    script = ok(daemon, "completion", "bash")
    bin_dir = str(Path(SDCTL).parent)

    def complete(line: str) -> list[str]:
        words = shlex.split(line) + ([""] if line.endswith(" ") else [])
        program = (
            f"source /dev/stdin; COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); "
            f"COMP_CWORD={len(words) - 1}; _sdctl; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
        env = environment(daemon, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}")
        done = subprocess.run(
            ["bash", "-c", program], input=script, capture_output=True, text=True, env=env,
            timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return sorted(w for w in done.stdout.split("\n") if w)

    assert complete("sdctl ser") == ["service", "services"]
    assert complete("sdctl ") == sorted(
        ["services", "service", "create", "delete", "ports", "register", "deregister",
         "watch", "resolve", "completion"]
    )  # fmt: skip
    assert complete("sdctl register --t") == [
        "--tag",
        "--timeout",
        "--token",
        "--token-file",
        "--ttl",
    ]
    assert complete("sdctl -o ") == ["json", "table"]
    assert complete("sdctl --addr http://x services -o j") == ["json"]
    assert complete("sdctl completion ") == ["bash"]
    assert complete(f"sdctl service {name[:8]}") == sorted(
        s.name for s in sd.services() if s.name.startswith(name[:8])
    )
    assert name in complete(f"sdctl -o json resolve {name}")
    assert complete(f"sdctl resolve {name} ") == []  # PORT: no guess


# ---- the README ----------------------------------------------------------------------------------
def test_readme_quick_start_sdctl_lines(daemon: Daemon, sd: Client, name: str) -> None:
    """The quick start's sdctl block, against the daemon (the service renamed): every line
    exits 0, and the resolve line prints what the README shows beneath it."""
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in re.findall(r"```sh\n(.*?)```", section, re.S) if "sdctl " in b)
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert any(ln.startswith("sdctl resolve") for ln in lines)
    for i, line in enumerate(lines):
        if not line.startswith("sdctl"):
            continue
        args = shlex.split(re.sub(r"\bwebapp\b", name, line.split(" #")[0]))[1:]
        out = ok(daemon, *args)
        shown: list[str] = []  # the comment lines right below: the output it shows
        for below in lines[i + 1 :]:
            if not below.startswith("#"):
                break
            shown.append(below.lstrip("# "))
        if shown:
            assert rows(out) == [s.split() for s in shown], (line, out)


# ---- helpers -------------------------------------------------------------------------------------
class LineReader:
    """Lines of a subprocess's output, read by a thread, taken with a timeout."""

    def __init__(self, stream: Any) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self, timeout: float) -> str:
        line = self._lines.get(timeout=timeout)
        assert line is not None, "the output ended"
        return line


def watch_through(
    daemon: Daemon, args: list[str], steps: list[tuple[str, Callable[[], object]]]
) -> list[str]:
    """Run `sdctl ARGS` (a watch); for each step wait for a line matching its pattern, then
    take its action; finally SIGTERM, which must end it with 0. Returns the lines seen."""
    proc = subprocess.Popen(
        [SDCTL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(daemon),
    )
    seen: list[str] = []
    try:
        reader = LineReader(proc.stdout)
        deadline = time.monotonic() + 60
        for pattern, action in steps:
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"no line matching {pattern!r}; saw {seen}"
                try:
                    line = reader.next(left)
                except queue.Empty:
                    raise AssertionError(f"no line matching {pattern!r}; saw {seen}") from None
                seen.append(line)
                if re.search(pattern, line):
                    break
            action()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return seen
