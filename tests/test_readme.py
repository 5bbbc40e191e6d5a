"""The README's promises, executed: its quick-start transcript works against a live daemon, and
its configuration table lists every setting the daemon reads."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from service_discovery.app import App
from service_discovery.config import env_names

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


# The design's transcript, as the quick start must show it: every command it runs, in order
# (curl with its method and path, dig with its name and type). A README that lost one of them
# would otherwise pass, since the test below runs whatever lines it finds.
TRANSCRIPT = [
    ("curl", "PUT /service"),
    ("curl", "PUT /service/webapp/register"),
    ("curl", "PUT /service/webapp/port"),
    ("curl", "GET /services"),
    ("dig", "_http._tcp.webapp.svc.cluster.local SRV"),
    ("dig", "webapp.svc.cluster.local A"),
]


def quick_start_block() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the quick start has no transcript block after its two commands"
    return [line for line in blocks[1].splitlines() if line.strip()]


def command(line: str) -> tuple[str, str]:
    """("curl", "METHOD /path") or ("dig", "name TYPE") for a transcript line."""
    argv = shlex.split(line)
    if argv[0] == "curl":
        method = argv[argv.index("-X") + 1] if "-X" in argv else "GET"
        method = next((a[2:] for a in argv if a.startswith("-X") and len(a) > 2), method)
        url = next(a for a in argv if "://" in a)
        return "curl", f"{method} {urlsplit(url).path}"
    if argv[0] == "dig":
        rest = [a for a in argv[1:] if not a.startswith(("-", "@", "+"))]
        return "dig", " ".join(rest)
    return argv[0], ""


def test_configuration_table_lists_every_setting() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for env in env_names().values():
        assert f"| `{env}` |" in table, f"{env} is missing from the README's table"


def test_quick_start_shows_the_design_transcript() -> None:
    """The transcript's commands are the design's, none missing, none left untested (a line
    that is neither curl nor dig must be a comment showing the answer above it)."""
    lines = quick_start_block()
    commands = [command(ln) for ln in lines if not ln.startswith("#")]
    assert commands == TRANSCRIPT, commands


def test_quick_start_has_two_commands() -> None:
    section = README.split("## Quick start", 1)[1]
    first = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in first.splitlines() if ln.strip()]
    assert commands == ["make run", "make test"]


async def test_transcript_runs_against_the_daemon(app: App, unique_name: str) -> None:
    """1. run each curl line (renamed service, our ports); 2. each dig line prints the answer the
    README shows beneath it."""
    if not shutil.which("dig") or not shutil.which("curl"):
        pytest.fail("dig and curl are required (make test installs them)")
    lines = quick_start_block()
    ran: list[tuple[str, str]] = []

    def adapt(line: str) -> str:
        line = line.replace("localhost:3000", f"127.0.0.1:{app.http_port}")
        line = line.replace("-p8053", f"-p{app.dns_port}")
        return re.sub(r"\bwebapp\b", unique_name, line)

    async def run(*argv: str) -> str:
        # a subprocess, awaited: the daemon under test shares this event loop
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        return out.decode()

    for i, line in enumerate(lines):
        if line.startswith("curl"):
            code = await run(
                *shlex.split(adapt(line)), "-s", "-o", "/dev/null", "-w", "%{http_code}"
            )
            assert code.startswith("2"), (line, code)
            ran.append(command(line))
        elif line.startswith("dig"):
            expected = adapt(lines[i + 1].lstrip("# ")).split()
            out = await run(*shlex.split(adapt(line)), "+noall", "+answer")
            answers = [ln.split() for ln in out.splitlines() if ln.strip()]
            assert expected in answers, (line, out)
            ran.append(command(line))
    assert ran == TRANSCRIPT, ran  # every curl and dig line of the transcript was run
