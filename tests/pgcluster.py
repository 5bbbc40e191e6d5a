"""A PostgreSQL primary and a synchronous hot standby from the machine's binaries (initdb,
pg_basebackup, pg_ctl), on loopback ports and data directories of their own, for failover tests.

Run as root, every binary runs as the `postgres` user (initdb refuses root), in a directory it
owns. Processes are stopped by their PIDs (pg_ctl, or SIGKILL for a "node" that dies).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2


def _pg_bin() -> Path:
    """SD_PG_BIN, else the newest /usr/lib/postgresql/<version>/bin (Debian's layout)."""
    if os.environ.get("SD_PG_BIN"):
        return Path(os.environ["SD_PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
BINARIES = ("initdb", "pg_ctl", "pg_basebackup")


def missing_binaries() -> str | None:
    """Why the cluster cannot run here, or None."""
    absent = [b for b in BINARIES if not (PG_BIN / b).is_file()]
    if absent:
        return f"PostgreSQL binaries {', '.join(absent)} not in {PG_BIN} (set SD_PG_BIN)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to drop to the postgres user"
    return None


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class Node:
    name: str
    datadir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


@dataclass
class PgCluster:
    """`primary` streams synchronously to `standby` (synchronous_standby_names): a commit is
    acknowledged only once the standby has it, so a promotion loses no acknowledged write."""

    primary_port: int
    standby_port: int
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sd-pgcluster-")))
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.primary = Node("primary", self.root / "primary", self.primary_port)
        self.standby = Node("standby", self.root / "standby", self.standby_port)
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")

    def url(self, *, standby_first: bool = False) -> str:
        """The multi-host URL a daemon uses: both nodes, the writable one chosen by libpq."""
        nodes = [self.primary, self.standby]
        if standby_first:
            nodes.reverse()
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        cmd = _as_postgres([str(PG_BIN / argv[0]), *argv[1:]])
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        self.log.append(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
        if res.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({res.returncode}):\n{res.stdout}{res.stderr}")

    def _start(self, node: Node) -> None:
        self._run("pg_ctl", "-D", str(node.datadir), "-l", str(self.root / f"{node.name}.log"),
                  "-w", "-t", "60", "start")  # fmt: skip

    def start_primary(
        self, conf: str = "", hba: str | None = None, files: dict[str, bytes] | None = None
    ) -> None:
        """The primary alone: `conf` appended to its postgresql.conf, `hba` (when given) as its
        whole pg_hba.conf, `files` written into its data directory (owner only, as a server
        key must be) before it starts."""
        p = self.primary
        self._run("initdb", "-D", str(p.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with open(p.datadir / "postgresql.conf", "a") as out:
            out.write(
                f"port = {p.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n"
                "synchronous_standby_names = 'standby'\nsynchronous_commit = on\n"
                "fsync = off\nfull_page_writes = on\nshared_buffers = 16MB\n" + conf
            )
        if hba is not None:
            (p.datadir / "pg_hba.conf").write_text(hba)
        with open(p.datadir / "pg_hba.conf", "a") as out:
            out.write("host replication postgres 127.0.0.1/32 trust\n")
        for name, data in (files or {}).items():
            path = p.datadir / name
            path.write_bytes(data)
            path.chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(path, "postgres", "postgres")
        self._start(p)

    def start(self) -> None:
        self.start_primary()
        p, s = self.primary, self.standby
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres",
                  "-D", str(s.datadir), "-R", "-X", "stream")  # fmt: skip
        with open(s.datadir / "postgresql.conf", "a") as conf:
            # cluster_name is the walreceiver's application_name: what the primary waits for.
            # Once promoted it has no standby of its own: waiting for one would hang every
            # commit (an operator such as CloudNativePG re-points replication instead).
            conf.write(f"port = {s.port}\ncluster_name = 'standby'\n"
                       "synchronous_standby_names = ''\n")  # fmt: skip
        self._start(s)
        self.wait_streaming()

    def wait_streaming(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with psycopg2.connect(self.primary.url) as conn, conn.cursor() as cur:
                cur.execute("SELECT sync_state FROM pg_stat_replication")
                if ("sync",) in cur.fetchall():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the standby never became a synchronous standby")
            time.sleep(0.1)

    def kill_primary(self) -> None:
        """The primary's node dies: SIGKILL to the postmaster and every backend of it."""
        pid = self.primary.postmaster_pid()
        assert pid is not None, "the primary is not running"
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.standby.datadir), "-w", "-t", "60", "promote")

    def stop(self) -> None:
        for node in (self.standby, self.primary):
            pid = node.postmaster_pid()
            if pid is None or not _alive(pid):
                continue
            try:
                self._run("pg_ctl", "-D", str(node.datadir), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self, node: Node, last: int = 3000) -> str:
        try:
            return (self.root / f"{node.name}.log").read_text(errors="replace")[-last:]
        except OSError:
            return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (a postmaster's backends and auxiliary processes)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            out.append(int(entry.name))
    return out
