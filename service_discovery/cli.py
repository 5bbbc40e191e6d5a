"""The command line: `serve`, `migrate`, `migrate --check [--wait S]`. The only place that turns
errors into exit codes: 0 ok, 1 failure, 2 bad configuration or usage, 3 migrations pending.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from service_discovery import __version__
from service_discovery.config import Config, ConfigError, flag_of
from service_discovery.logs import FORMAT, MalformedRequests, RedactingFormatter

NOTICE = 25
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_PENDING = 0, 1, 2, 3


# ---- flags generated from Config's fields, so each option is written once ----
class _SecretFlag(argparse.Action):
    """A flag that used to carry a secret: refused, without repeating its value."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        env = self.metavar
        parser.exit(
            2,  # a usage error, as argparse's own
            f"{parser.prog}: {self.option_strings[0]} is not accepted (a command line is visible "
            f"to every user of the machine): set {env} in the environment, or {env}_FILE to a "
            "file holding it\n",
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per Config field, generated so each option is written once."""
    group = parser.add_argument_group("settings (flags win over the environment)")
    for f in dataclasses.fields(Config):
        flag = flag_of(f)
        if flag is None:
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                action=_SecretFlag,
                nargs="?",
                metavar=f.metadata["env"],
                help=argparse.SUPPRESS,
            )
            continue
        group.add_argument(
            flag,
            dest=f.name,
            default=None,
            metavar=f.metadata["env"],
            help=f"{f.metadata['help']} (default: {f.default})",
        )


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Config) if flag_of(f)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="service-discovery",
        description="Service registry on PostgreSQL, served over DNS, HTTP and gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument(
        "--migrate", action="store_true", help="apply pending migrations before serving"
    )
    add_arguments(serve)
    mig = sub.add_parser("migrate", help="apply migrations, or check that none is pending")
    mig.add_argument(
        "--check", action="store_true", help="exit 0 only if no migration is pending (else 3)"
    )
    mig.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --check: wait up to SECONDS for the database to be current",
    )
    add_arguments(mig)
    return parser


def setup_logging(level: str) -> None:
    logging.addLevelName(NOTICE, "NOTICE")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(FORMAT))  # tokens in URLs never reach the log
    logging.basicConfig(level=_LEVELS[level], handlers=[handler])
    if _LEVELS[level] > logging.DEBUG:  # at debug, every malformed request with its traceback
        logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
        logging.getLogger("asyncio").setLevel(logging.WARNING)


def _migrate(config: Config, check: bool, wait: float) -> int:
    from service_discovery import migrate

    url = config.migration_url  # the schema owner's (MIGRATE_DATABASE_URL), else DATABASE_URL
    if not url:
        print("migrate: DATABASE_URL is not set", file=sys.stderr)
        return EXIT_CONFIG
    if check:
        todo = migrate.wait_until_current(url, wait)
        if todo:
            print(f"migrate: pending migrations: {', '.join(todo)}", file=sys.stderr)
            return EXIT_PENDING
        print("migrate: database is at the latest migration")
        return EXIT_OK
    applied = migrate.apply(url)
    print(f"migrate: applied {', '.join(applied)}" if applied else "migrate: nothing to apply")
    return EXIT_OK


def _serve(config: Config, migrate_first: bool) -> int:
    import uvloop

    from service_discovery.app import serve

    def exit_now() -> None:
        os._exit(EXIT_FAIL)

    uvloop.run(serve(config, migrate_first=migrate_first, on_second_signal=exit_now))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env(overrides=overrides_from(args))
    except ConfigError as exc:
        print(f"service-discovery: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logger_level)
    from service_discovery.database import MigrationsPending
    from service_discovery.errors import RegistryError

    try:
        if args.command == "migrate":
            return _migrate(config, args.check, args.wait)
        return _serve(config, args.migrate)
    except ConfigError as exc:
        print(f"service-discovery: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except MigrationsPending as exc:
        print(f"service-discovery: {exc}", file=sys.stderr)
        return EXIT_PENDING
    except RegistryError as exc:
        print(f"service-discovery: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as exc:  # a port in use, an unreadable data directory
        print(f"service-discovery: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
