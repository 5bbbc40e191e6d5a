"""The README's promises, executed: its quick-start transcript works against a live daemon, and
its configuration table lists every setting the daemon reads."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
from pathlib import Path

import pytest

from service_discovery.app import App
from service_discovery.config import env_names

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def quick_start_block() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line for line in blocks[1].splitlines() if line.strip()]


def test_configuration_table_lists_every_setting() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for env in env_names().values():
        assert f"| `{env}` |" in table, f"{env} is missing from the README's table"


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
        elif line.startswith("dig"):
            expected = adapt(lines[i + 1].lstrip("# ")).split()
            out = await run(*shlex.split(adapt(line)), "+noall", "+answer")
            answers = [ln.split() for ln in out.splitlines() if ln.strip()]
            assert expected in answers, (line, out)
