"""The one frozen Config: every setting, its environment variable, default and parser.

Built once (`Config.from_env`) and passed down. CLI flags are generated from the same
fields (`add_arguments`), so an option is written exactly once, here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service_discovery import dburl
from service_discovery.config_parsers import (
    Parser,
    boolean,
    choice,
    datacenter,
    domain,
    float_range,
    hex_secret,
    int_range,
    ip,
    postgres_url,
    secret_file,
    verbatim,
)

LOG_LEVELS = ("debug", "info", "notice", "warning", "error")
_I32 = 2**31 - 1  # SOA timers are 32-bit; BIND and Knot take at most this


class ConfigError(ValueError):
    """An invalid setting; the message names the variable and what it accepts."""


def _setting(
    env: str,
    default: Any,
    parse: Parser,
    help: str,
    *,
    secret: bool = False,
    empty_is_error: str | None = None,
) -> Any:
    """A field of Config. Empty counts as unset, except with `empty_is_error` (why): where unset
    means something (no tokens: writes open), set but empty is a broken template, not a choice."""
    return field(
        default=default,
        repr=not secret,  # secrets stay out of repr(config), tracebacks and log lines
        metadata=dict(
            env=env, parse=parse, help=help, secret=secret, empty_is_error=empty_is_error
        ),
    )


_OPEN_WRITES = "unset it to leave writes unauthenticated"


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of the daemon. Defaults are what `serve` uses with an empty environment."""

    database_url: str | None = _setting(
        "DATABASE_URL",
        None,
        postgres_url,
        "PostgreSQL URL; unset = embedded server",
        secret=True,
    )
    database_url_file: str | None = _setting(
        "DATABASE_URL_FILE", None, verbatim, "file holding the PostgreSQL URL (for DATABASE_URL)",
        empty_is_error="unset it to use DATABASE_URL or the embedded server",
    )  # fmt: skip
    data_dir: str | None = _setting(
        "SD_DATA_DIR", None, verbatim, "data directory of the embedded PostgreSQL"
    )
    bind_address: str = _setting("BIND_ADDRESS", "127.0.0.1", ip, "address every listener binds")
    http_port: int = _setting("HTTP_PORT", 3000, int_range(0, 65535), "HTTP API port")
    dns_port: int = _setting("DNS_PORT", 8053, int_range(0, 65535), "DNS port (UDP and TCP)")
    grpc_port: int = _setting("GRPC_PORT", 8081, int_range(0, 65535), "gRPC port")
    dns_domain: str = _setting("DNS_DOMAIN", "svc.cluster.local", domain, "DNS zone served")
    dns_ttl: int = _setting("DNS_TTL", 5, int_range(0, 86400), "TTL of positive answers")
    dns_negative_ttl: int | None = _setting(
        "DNS_NEGATIVE_TTL", None, int_range(0, 86400), "SOA minimum / negative TTL (= DNS_TTL)"
    )
    dns_max_udp_size: int = _setting(
        "DNS_MAX_UDP_SIZE", 1232, int_range(512, 65535), "largest UDP answer with EDNS0"
    )
    dns_ns_name: str | None = _setting(
        "DNS_NS_NAME", None, domain, "name of the zone's NS record (= ns.<zone>)"
    )
    node_ip: str | None = _setting(
        "NODE_IP", None, ip, "this replica's address, for the NS A record (= bind address)"
    )
    dns_consul_names: bool = _setting(
        "SD_DNS_CONSUL_NAMES", False, boolean,
        "also answer <svc>.service.<zone>, <tag>.<svc>.service.<zone>, _<svc>._tcp.service.<zone>",
    )  # fmt: skip
    # SOA timers (RFC 1912 2.2): refresh 20 min-12 h, retry below it, expire 2-4 weeks.
    dns_soa_refresh: int = _setting("DNS_SOA_REFRESH", 3600, int_range(1, _I32), "SOA refresh")
    dns_soa_retry: int = _setting("DNS_SOA_RETRY", 600, int_range(1, _I32), "SOA retry (< refresh)")
    dns_soa_expire: int = _setting(
        "DNS_SOA_EXPIRE", 1_209_600, int_range(7 * 86400, _I32), "SOA expire (> refresh + retry)"
    )
    dns_srv_targets: str = _setting(
        "DNS_SRV_TARGETS", "service", choice("service", "endpoint"),
        "SRV target: <svc>.<zone>, or one record per endpoint, <address>.<svc>.<zone>",
    )  # fmt: skip
    dns_cache_size: int = _setting(
        "DNS_CACHE_SIZE", 50000, int_range(0, 10_000_000), "encoded answers kept"
    )
    dns_tcp_max_connections: int = _setting(
        "DNS_TCP_MAX_CONNECTIONS", 1000, int_range(1, 1_000_000), "open DNS TCP connections"
    )
    dns_tcp_idle_seconds: float = _setting(
        "DNS_TCP_IDLE_SECONDS", 10.0, float_range(0.1, 3600), "idle DNS TCP connection timeout"
    )
    logger_level: str = _setting("LOGGER_LEVEL", "info", choice(*LOG_LEVELS), "log level")
    shutdown_drain_seconds: float = _setting(
        "SHUTDOWN_DRAIN_SECONDS", 5.0, float_range(0, 3600), "wait after /ready turns 503"
    )
    shutdown_timeout_seconds: float = _setting(
        "SHUTDOWN_TIMEOUT_SECONDS", 10.0, float_range(0, 3600), "deadline of all after the drain"
    )
    db_pool_min_size: int = _setting("DB_POOL_MIN_SIZE", 1, int_range(0, 1000), "pool minimum")
    db_pool_max_size: int = _setting("DB_POOL_MAX_SIZE", 10, int_range(1, 1000), "pool maximum")
    db_timeout_seconds: float = _setting(
        "DB_TIMEOUT_SECONDS", 5.0, float_range(0.1, 600), "connect/statement timeout of writes"
    )
    db_snapshot_chunk_rows: int = _setting(
        "DB_SNAPSHOT_CHUNK_ROWS", 2000, int_range(1, 1_000_000),
        "rows per round trip when loading the copy (DB_TIMEOUT_SECONDS bounds each)",
    )  # fmt: skip
    http_idle_timeout_seconds: float = _setting(
        "HTTP_IDLE_TIMEOUT_SECONDS", 15.0, float_range(0.1, 3600),
        "close an HTTP connection idle (or still sending its headers) this long",
    )  # fmt: skip
    http_body_timeout_seconds: float = _setting(
        "HTTP_BODY_TIMEOUT_SECONDS", 10.0, float_range(0.1, 3600),
        "a request body must arrive within this (else 408)",
    )  # fmt: skip
    http_max_body_bytes: int = _setting(
        "HTTP_MAX_BODY_BYTES", 1024 * 1024, int_range(1024, 1 << 30), "largest request body"
    )
    api_tokens: str | None = _setting(
        "SD_API_TOKENS", None, verbatim, "comma-separated bearer tokens for writes; set but empty "
        "= error", secret=True, empty_is_error=_OPEN_WRITES,
    )  # fmt: skip
    api_tokens_file: str | None = _setting(
        "SD_API_TOKENS_FILE", None, verbatim, "file of bearer tokens, one per line: TOKEN "
        "[SCOPE]; set but empty = error", empty_is_error=_OPEN_WRITES,
    )  # fmt: skip
    protect_reads: bool = _setting("SD_PROTECT_READS", False, boolean, "require a token for reads")
    ui: bool = _setting("SD_UI", True, boolean, "serve the web dashboard at /ui/")
    max_endpoints_per_service: int = _setting(
        "SD_MAX_ENDPOINTS_PER_SERVICE", 10000, int_range(1, 10_000_000), "endpoints per service"
    )
    max_tags_per_endpoint: int = _setting(
        "SD_MAX_TAGS_PER_ENDPOINT", 32, int_range(0, 10000), "tags per endpoint"
    )
    max_attributes: int = _setting(
        "SD_MAX_ATTRIBUTES", 64, int_range(0, 10000), "attributes per service"
    )
    max_value_length: int = _setting(
        "SD_MAX_VALUE_LENGTH", 1024, int_range(1, 1 << 20), "length of attribute values, tags"
    )
    max_named_ports: int = _setting(
        "SD_MAX_NAMED_PORTS", 64, int_range(0, 10000), "named ports per service"
    )
    max_services: int = _setting(
        "SD_MAX_SERVICES", 100_000, int_range(1, 10_000_000), "services in the registry"
    )
    max_watches_per_client: int = _setting(
        "SD_MAX_WATCHES_PER_CLIENT", 2000, int_range(1, 1_000_000), "open watches per address"
    )
    watch_max_wait_seconds: float = _setting(
        "SD_WATCH_MAX_WAIT_SECONDS", 600.0, float_range(0.1, 3600), "cap of ?wait="
    )
    write_batch_max: int = _setting("SD_WRITE_BATCH_MAX", 500, int_range(1, 100_000),
        "writes per batch at most (group commit; bulk: its endpoints)")  # fmt: skip
    max_watches: int = _setting("SD_MAX_WATCHES", 10000, int_range(1, 10**7), "all open watches")
    lease_reap_interval_seconds: float = _setting(
        "SD_LEASE_REAP_INTERVAL_SECONDS", 1.0, float_range(0.05, 3600), "reaper period"
    )
    lease_flush_interval_seconds: float = _setting(
        "SD_LEASE_FLUSH_INTERVAL_SECONDS", 0.2, float_range(0.01, 60), "heartbeat batch window"
    )
    lease_mass_expiry_share: float = _setting(
        "SD_LEASE_MASS_EXPIRY_SHARE", 0.5, float_range(0, 1), "expired share that stops expiry"
    )
    lease_mass_expiry_min: int = _setting(
        "SD_LEASE_MASS_EXPIRY_MIN", 10, int_range(0, 1_000_000), "leases before the guard applies"
    )
    consul_datacenter: str = _setting(
        "SD_CONSUL_DATACENTER", "dc1", datacenter, "datacenter the Consul-compatible API reports"
    )

    # ---- DNS: what one client may cost (README: "What one DNS client may cost") ----------
    dns_miss_budget_per_second: int = _setting(
        "DNS_MISS_BUDGET_PER_SECOND", 1000, int_range(0, 10**7),
        "cache misses a second per client /24 or /56, per transport (0 = off)",
    )  # fmt: skip
    dns_slip: int = _setting("DNS_SLIP", 2, int_range(0, 100), "every Nth limited UDP query: TC")
    dns_tcp_max_connections_per_client: int = _setting(
        "DNS_TCP_MAX_CONNECTIONS_PER_CLIENT", 64, int_range(0, 10**6), "open TCP conns per address"
    )
    dns_rrl_responses_per_second: int = _setting(
        "DNS_RRL_RESPONSES_PER_SECOND", 0, int_range(0, 10**7), "RRL: UDP answers/s per network"
    )
    dns_rrl_udp_size_without_cookie: int = _setting(
        "DNS_RRL_UDP_SIZE_WITHOUT_COOKIE", 512, int_range(512, 65535), "RRL: UDP size w/o cookie"
    )
    dns_cookies: bool = _setting("DNS_COOKIES", True, boolean, "answer DNS cookies (RFC 7873)")
    dns_cookie_secret: str | None = _setting(
        "DNS_COOKIE_SECRET", None, hex_secret, "same on all replicas; unset: random", secret=True
    )

    # ---- TLS, client certificates and the migration role (README: Production) ----------
    tls_cert_file: str | None = _setting(
        "TLS_CERT_FILE", None, verbatim, "PEM certificate chain: HTTP and gRPC serve TLS"
    )
    tls_key_file: str | None = _setting("TLS_KEY_FILE", None, verbatim, "PEM private key")
    tls_client_ca_file: str | None = _setting(
        "TLS_CLIENT_CA_FILE", None, verbatim, "PEM CA bundle: require client certificates (mTLS)"
    )
    tls_client_cert_auth: str = _setting(
        "TLS_CLIENT_CERT_AUTH", "none", choice("none", "read", "write"),
        "what a verified client certificate allows without a bearer token",
    )  # fmt: skip
    tls_reload_seconds: float = _setting(
        "TLS_RELOAD_SECONDS", 5.0, float_range(0.1, 3600), "period of the certificate files check"
    )
    migrate_database_url: str | None = _setting(
        "MIGRATE_DATABASE_URL", None, postgres_url,
        "PostgreSQL URL of the schema owner for migrations (= DATABASE_URL)", secret=True,
    )  # fmt: skip

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Config:
        """Read every field from `env` (default os.environ); `overrides` (CLI flags) win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and (raw != "" or f.metadata["empty_is_error"]):
                values[f.name] = _parse(f, raw)
        for name, raw in (overrides or {}).items():
            if raw is not None:
                values[name] = _parse(_FIELDS[name], str(raw))
        config = cls(**values)
        if config.db_pool_min_size > config.db_pool_max_size:
            raise ConfigError(
                "DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE "
                f"(got {config.db_pool_min_size} > {config.db_pool_max_size})"
            )
        if config.database_url_file is not None:
            if config.database_url is not None:
                raise ConfigError("DATABASE_URL and DATABASE_URL_FILE are both set: give one")
            url = _read_url(config.database_url_file)
            config = dataclasses.replace(config, database_url=url)
        for name in ("migrate_database_url", "dns_cookie_secret"):  # no *_FILE setting of its own
            config = _with_secret_file(config, _FIELDS[name], env)
        config._check_tls()
        if not config.dns_soa_retry < config.dns_soa_refresh:
            raise ConfigError("DNS_SOA_RETRY must be below DNS_SOA_REFRESH (RFC 1912 2.2)")
        if config.dns_soa_expire <= config.dns_soa_refresh + config.dns_soa_retry:
            raise ConfigError("DNS_SOA_EXPIRE must exceed DNS_SOA_REFRESH + DNS_SOA_RETRY")
        return config

    def _check_tls(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        if self.tls_client_cert_auth != "none" and not self.tls_client_ca_file:
            raise ConfigError("TLS_CLIENT_CERT_AUTH needs TLS_CLIENT_CA_FILE")

    @property
    def migration_url(self) -> str | None:
        """The URL `migrate` connects with: the schema owner's, else the daemon's own."""
        return self.migrate_database_url or self.database_url

    @property
    def negative_ttl(self) -> int:
        return self.dns_ttl if self.dns_negative_ttl is None else self.dns_negative_ttl

    @property
    def ns_name(self) -> str:
        return self.dns_ns_name or f"ns.{self.dns_domain}"

    @property
    def own_address(self) -> str:
        """The address the NS record points at: NODE_IP, else a routable bind address."""
        if self.node_ip:
            return self.node_ip
        if ipaddress.ip_address(self.bind_address).is_unspecified:
            return "127.0.0.1"
        return self.bind_address

    def resolved_data_dir(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir)
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
        return Path(base) / "service-discovery" / "pgdata"

    def tokens(self) -> dict[str, str]:
        """Bearer tokens from SD_API_TOKENS and SD_API_TOKENS_FILE (empty = writes open), each
        with its scope as written: '' for SD_API_TOKENS, the text after the token on a line of
        the file (auth.parse_scope reads it)."""
        tokens: dict[str, str] = {}
        if self.api_tokens:
            tokens.update((t.strip(), "") for t in self.api_tokens.split(","))
        if self.api_tokens_file:
            try:
                text = Path(self.api_tokens_file).read_text()
            except OSError as exc:
                raise ConfigError(f"SD_API_TOKENS_FILE: cannot read it ({exc.strerror})") from exc
            for line in text.splitlines():
                if line.lstrip().startswith("#"):
                    continue  # a comment
                token, _, scope = line.strip().partition(" ")
                tokens[token] = scope.strip()
        tokens.pop("", None)
        # Fail closed: a token setting that yields no token must not leave writes open.
        if (self.api_tokens is not None or self.api_tokens_file is not None) and not tokens:
            raise ConfigError("SD_API_TOKENS / SD_API_TOKENS_FILE is set but holds no token")
        if self.protect_reads and not tokens:
            raise ConfigError("SD_PROTECT_READS=true needs SD_API_TOKENS or SD_API_TOKENS_FILE")
        return tokens

    def redacted(self) -> dict[str, Any]:
        """The settings for a log line, with secrets hidden."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata["secret"] and value else value
        return out


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _with_secret_file(config: Config, f: dataclasses.Field[Any], env: Mapping[str, str]) -> Config:
    var = f.metadata["env"]
    if (path := env.get(var + "_FILE")) is None:
        return config
    if getattr(config, f.name) is not None:
        raise ConfigError(f"{var} and {var}_FILE are both set: give one")
    try:
        return dataclasses.replace(config, **{f.name: secret_file(var, path, f.metadata["parse"])})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _read_url(path: str) -> str:
    try:
        url = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"DATABASE_URL_FILE: cannot read it ({exc.strerror})") from exc
    if not url:
        raise ConfigError("DATABASE_URL_FILE holds no URL")
    try:
        return dburl.check(url)
    except dburl.BadUrl as exc:
        raise ConfigError(f"DATABASE_URL_FILE holds an invalid URL ({exc})") from None


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    if raw == "" and f.metadata["empty_is_error"]:
        raise ConfigError(
            f"{f.metadata['env']} is set but empty: give a value, or {f.metadata['empty_is_error']}"
        )
    parse: Parser = f.metadata["parse"]
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        shown = "***" if f.metadata["secret"] else repr(raw)
        why = f" ({exc})" if isinstance(exc, dburl.BadUrl) else ""  # safe: no password in it
        raise ConfigError(
            f"{f.metadata['env']}={shown} is invalid: expected {parse.accepts}{why}"
        ) from None


def env_names() -> dict[str, str]:
    """Field name -> environment variable, for docs and contract tests."""
    return {f.name: f.metadata["env"] for f in dataclasses.fields(Config)}


def flag_of(f: dataclasses.Field[Any]) -> str | None:
    """The command-line flag of a setting; None for secrets, which a command line shows to every
    user of the machine (/proc/*/cmdline, ps): they come from the environment or <VARIABLE>_FILE."""
    return None if f.metadata["secret"] else "--" + f.name.replace("_", "-")
