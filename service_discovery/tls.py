"""TLS for the HTTP and gRPC listeners: the certificate files and their reload.

One `ssl.SSLContext` serves HTTP for the life of the process: a reload loads the new chain into
that same context, so new handshakes get the new certificate while open connections keep theirs
(nothing is dropped). gRPC gets `grpc.dynamic_ssl_server_credentials`, whose fetcher gRPC calls
before each new handshake: it hands over the new configuration once after a reload and None
("keep the current one") otherwise. The files are checked every TLS_RELOAD_SECONDS with `stat`
(a few syscalls on the loop); they are read only when their identity (inode, size, mtime)
changed, which is how cert-manager's in-place rotation of a mounted Secret looks (an atomic
symlink swap). A half-rotated pair (new certificate, old key) fails a trial load on a scratch
context and is retried at the next check: the live context never sees it.

The client CA bundle is reloaded too, but OpenSSL's store only grows: a CA added to the bundle
is trusted at once, a CA removed from it stays trusted until the process restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
from dataclasses import dataclass

import grpc

from service_discovery.config import Config

log = logging.getLogger(__name__)


class TlsError(RuntimeError):
    """The certificate files cannot be read or do not form a usable certificate and key."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: str
    key_file: str
    client_ca_file: str | None  # set: clients must present a certificate signed by it
    reload_seconds: float

    @classmethod
    def from_config(cls, config: Config) -> TlsSettings | None:
        if not (config.tls_cert_file and config.tls_key_file):
            return None
        return cls(
            cert_file=config.tls_cert_file,
            key_file=config.tls_key_file,
            client_ca_file=config.tls_client_ca_file,
            reload_seconds=config.tls_reload_seconds,
        )

    @property
    def files(self) -> tuple[str, ...]:
        return (self.cert_file, self.key_file) + (
            (self.client_ca_file,) if self.client_ca_file else ()
        )


def _identity(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)  # follows symlinks: a swapped ..data link is a new file
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Certificates:
    """The server's certificate, key and client CA, loaded and kept current.

    `ssl_context` is for aiohttp, `grpc_credentials()` for grpc.aio; `start` begins the periodic
    check, `stop` ends it; `reload` checks now (returns whether anything was loaded).
    """

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self.ssl_context = self._new_context()
        self._seen: tuple[tuple[int, int, int, int], ...] | None = None
        self._lock = threading.Lock()  # the gRPC fetcher runs on gRPC's threads
        self._grpc_config: object | None = None  # a configuration gRPC has not fetched yet
        self._latest: object | None = None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        if not self.reload():
            raise TlsError("cannot load the TLS certificate and key")  # pragma: no cover

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        if self.settings.client_ca_file:
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def reload(self) -> bool:
        """Load the files if they changed since the last load; False if they did not. The
        first load raises TlsError on bad files; later ones log and keep the current ones."""
        s = self.settings
        first = self._seen is None
        try:
            seen = tuple(_identity(p) for p in s.files)
            if seen == self._seen:
                return False
            # A trial load on a scratch context, so a half-rotated pair never reaches the live one.
            self._new_context().load_cert_chain(s.cert_file, s.key_file)
            self.ssl_context.load_cert_chain(s.cert_file, s.key_file)
            ca = None
            if s.client_ca_file:
                self.ssl_context.load_verify_locations(cafile=s.client_ca_file)
                ca = _read(s.client_ca_file)
            pair = (_read(s.key_file), _read(s.cert_file))
        except (OSError, ssl.SSLError, ValueError) as exc:
            if first:
                raise TlsError(f"TLS_CERT_FILE/TLS_KEY_FILE: {exc}") from exc
            log.warning("TLS certificate reload failed (keeping the current one): %s", exc)
            return False
        config = grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)
        with self._lock:
            self._grpc_config = self._latest = config
        self._seen = seen
        if not first:
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", s.cert_file)
        return True

    def _fetch(self) -> object | None:
        # Called by gRPC before a handshake: None keeps the configuration it has.
        with self._lock:
            config, self._grpc_config = self._grpc_config, None
        return config

    def grpc_credentials(self) -> grpc.ServerCredentials:
        with self._lock:
            self._grpc_config = None  # the initial configuration is the latest
        return grpc.dynamic_ssl_server_credentials(
            self._latest,
            self._fetch,
            require_client_authentication=bool(self.settings.client_ca_file),
        )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="sd-tls-reload")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_seconds)
            self.reload()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
