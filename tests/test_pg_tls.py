"""PostgreSQL over TLS: a real server (tests/pgcluster, the machine's binaries) that accepts only
TLS connections (`hostssl` in pg_hba.conf), its certificate issued by a CA of the test's own.
`sslmode=verify-full&sslrootcert=` in DATABASE_URL is what the README documents; here both
drivers (asyncpg for `serve`, libpq for the migrations) are shown to use it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg2
import pytest
from helpers import Daemon, dns_a, eventually, free_port, put_ok
from pgcluster import PgCluster, missing_binaries
from tlsca import CA

pytestmark = pytest.mark.skipif(
    missing_binaries() is not None, reason=f"no PostgreSQL server: {missing_binaries()}"
)

HBA = "local all all trust\nhostssl all all 127.0.0.1/32 trust\n"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[PgCluster, Path]]:
    """A TLS-only PostgreSQL, and the path of the CA certificate that verifies it."""
    ca = CA("sd-pg-test-ca")
    issued = ca.issue("localhost")
    ca_file = tmp_path / "root.crt"
    ca_file.write_bytes(ca.pem)
    server = PgCluster(free_port(), free_port())
    conf = (
        "synchronous_standby_names = ''\n"  # no standby here: a commit must not wait for one
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
    )
    files = {"server.crt": issued.cert_pem, "server.key": issued.key_pem}
    try:
        server.start_primary(conf, HBA, files)
        yield server, ca_file
    except BaseException:
        print("\n".join(server.log[-3:]), server.server_log(server.primary))
        raise
    finally:
        server.stop()


def url(server: PgCluster, query: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{server.primary.port}/postgres?{query}"


def migrate_check(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service_discovery", "migrate", "--check"],
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_both_drivers_use_tls_and_verify_the_server(
    tls_server: tuple[PgCluster, Path], tmp_path: Path
) -> None:
    """1. Without TLS the server refuses the connection (so what follows cannot be plain);
    2. verify-full with another CA's certificate: migrate fails on the verification;
    3. verify-full with the right CA: `serve --migrate` on two replicas; a registration through
    one is answered over DNS by the other (LISTEN/NOTIFY over TLS); 4. every connection the
    replicas hold is encrypted (pg_stat_ssl)."""
    server, ca_file = tls_server
    plain = migrate_check(url(server, "sslmode=disable"))
    assert plain.returncode != 0 and "no encryption" in plain.stderr, plain.stderr
    other = tmp_path / "other.crt"
    other.write_bytes(CA("another-ca").pem)
    wrong = migrate_check(url(server, f"sslmode=verify-full&sslrootcert={other}"))
    assert wrong.returncode != 0 and "certificate verify failed" in wrong.stderr, wrong.stderr

    database_url = url(server, f"sslmode=verify-full&sslrootcert={ca_file}")
    a = Daemon(tmp_path / "a.log", env={"DATABASE_URL": database_url}, argv=(
        sys.executable, "-m", "service_discovery", "serve", "--migrate"))  # fmt: skip
    b = Daemon(tmp_path / "b.log", env={"DATABASE_URL": database_url})
    async with a, b, aiohttp.ClientSession() as http:
        await put_ok(http, f"{a.base}/service", {"name": "tls-svc"})
        await put_ok(http, f"{a.base}/service/tls-svc/register", {"ip": "10.9.0.1"})
        assert await dns_a(a.dns_port, "tls-svc") == ["10.9.0.1"]  # read-your-writes

        async def b_answers() -> bool:
            with contextlib.suppress(AssertionError):  # NXDOMAIN until the NOTIFY arrives
                return await dns_a(b.dns_port, "tls-svc") == ["10.9.0.1"]
            return False

        took = await eventually(b_answers, 20, "replica B answers the registration")
        print(f"replica B answered {took:.3f} s after replica A acknowledged")
        with psycopg2.connect(url(server, "sslmode=require")) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT s.ssl, s.version FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
                " WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()"
            )
            held = cur.fetchall()
    print(f"{len(held)} connections of two replicas: {sorted(set(held))}")
    assert len(held) >= 4, held  # each replica: a pool and its LISTEN connection
    assert all(encrypted for encrypted, _ in held), held
