"""`sdctl`: the registry from a terminal. Parses the command line, calls `Client`, prints
tables (aligned plain text for 80 columns) or exactly the API's JSON, and turns the client's
typed errors into exit codes; the only place that does."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from service_discovery_client import completion
from service_discovery_client.client import Client
from service_discovery_client.errors import (
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    ServiceDiscoveryError,
    Unauthorized,
    Unavailable,
)
from service_discovery_client.models import Endpoint, NamedPort, Service, Services

# Exit codes, one per error class; written here once and shown in `sdctl --help`.
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_CODES: list[tuple[type[ServiceDiscoveryError], int, str]] = [
    (InvalidInput, EXIT_USAGE, "the daemon refused the input (400, 413)"),
    (LimitExceeded, EXIT_USAGE, "a limit of the daemon (422)"),
    (NotFound, 3, "not found (404)"),
    (Conflict, 4, "conflict: already exists, or no lease to renew (409)"),
    (Unauthorized, 5, "authentication: token missing or wrong (401)"),
    (Unavailable, 6, "unavailable: no replica reachable, 503, 429"),
]
WIDTH = 80

EPILOG = f"""\
exit codes:
  0  success
  1  any other error
  2  usage: a wrong command line; also {EXIT_CODES[0][2]},
     {EXIT_CODES[1][2]}
{chr(10).join(f"  {code}  {text}" for _, code, text in EXIT_CODES[2:])}

environment:
  SD_ADDR   default --addr (a URL, or several separated by commas)
  SD_TOKEN  default --token

bash completion:  source <(sdctl completion bash)
"""


# ---- the command line ----------------------------------------------------------------------------
def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after the command's name."""
    default: Any = argparse.SUPPRESS if suppress else None
    g = parser.add_argument_group("connection and output")
    g.add_argument(
        "--addr",
        action="append",
        metavar="URL",
        default=default,
        help="daemon address; repeat (or separate with commas) for replicas [SD_ADDR, "
        "else http://127.0.0.1:3000]",
    )
    tokens = g.add_mutually_exclusive_group()
    tokens.add_argument("--token", metavar="T", default=default, help="bearer token [SD_TOKEN]")
    tokens.add_argument(
        "--token-file", metavar="F", default=default, help="read the token from this file"
    )
    g.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default=argparse.SUPPRESS if suppress else "table",
        help="table (default) or json: exactly what the API returned",
    )
    g.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        default=argparse.SUPPRESS if suppress else 5.0,
        help="seconds per attempt (default 5)",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="log each failed attempt, failover and lease event",
    )


def _attr(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {text!r}")
    return key, value


def _port(text: str) -> tuple[str, NamedPort]:
    """`http=tcp/8000[:priority:weight]`"""
    try:
        name, spec = text.split("=", 1)
        protocol, rest = spec.split("/", 1)
        number, *pw = rest.split(":")
        if len(pw) not in (0, 2) or not name:
            raise ValueError
        priority, weight = (int(pw[0]), int(pw[1])) if pw else (1, 1)
        return name, NamedPort(protocol, int(number), priority, weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected name=protocol/port[:priority:weight] (http=tcp/8000), got {text!r}"
        ) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdctl",
        description="Command line of the service-discovery registry (its HTTP API).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, synopsis: str, help: str, func: Callable[..., int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        sub._choices_actions[-1].metavar = f"{name} {synopsis}".strip()  # listed as used
        return p

    command("services", "", "list the services", cmd_services)
    p = command("service", "NAME", "show a service: attributes, ports, live endpoints", cmd_service)
    p.add_argument("name", metavar="NAME")
    p = command("create", "NAME [--attr K=V]...", "create a service", cmd_create)
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--attr", type=_attr, action="append", default=[], metavar="K=V", help="an attribute"
    )
    p = command("delete", "NAME", "delete a service with its ports and endpoints", cmd_delete)
    p.add_argument("name", metavar="NAME")
    p = command("ports", "NAME PORT...", "add or replace named ports", cmd_ports)
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "ports",
        type=_port,
        nargs="+",
        metavar="PORT",
        help="name=protocol/port[:priority:weight], e.g. http=tcp/8000 or http=tcp/8000:1:10",
    )
    p = command(
        "register",
        "NAME IP [--tag T]... [--ttl S]",
        "register an endpoint; with --ttl, hold a lease",
        cmd_register,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("ip", metavar="IP")
    p.add_argument("--tag", action="append", default=[], metavar="T", help="a tag (repeatable)")
    p.add_argument(
        "--ttl",
        type=_positive,
        metavar="S",
        help="lease of S seconds: stay in the foreground renewing it every S/3 s until "
        "SIGINT/SIGTERM, then deregister (a sidecar)",
    )
    p = command("deregister", "NAME IP", "remove an endpoint", cmd_deregister)
    p.add_argument("name", metavar="NAME")
    p.add_argument("ip", metavar="IP")
    p = command(
        "watch", "[NAME]", "print each change of a service (or of the list) as it comes", cmd_watch
    )
    p.add_argument("name", metavar="NAME", nargs="?")
    p = command(
        "resolve", "NAME PORT", "addresses and port of a named port, in SRV order", cmd_resolve
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("port", metavar="PORT")
    p = command("completion", "bash", "print the shell completion script", cmd_completion)
    p.add_argument("shell", choices=["bash"])
    # for the completion script: service names, quietly
    sub.add_parser("_names", parents=[common]).set_defaults(func=cmd_names)
    return parser


# ---- output --------------------------------------------------------------------------------------
def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int = WIDTH,
    *,
    header: bool = True,
) -> str:
    """Aligned columns, two spaces apart; when wider than `width`, the widest columns are cut
    (ending in "...") until it fits, none narrower than its header or 6 characters."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        i = max(range(len(widths)), key=lambda j: widths[j] - len(headers[j]))
        if widths[i] <= max(len(headers[i]), 6):
            break
        widths[i] -= 1

    def fit(text: str, w: int) -> str:
        return text if len(text) <= w else text[: max(0, w - 3)] + "..."

    lines = []
    for row in [headers, *rows] if header else rows:
        cells = [fit(c, w).ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _ports_text(ports: dict[str, NamedPort]) -> str:
    out = []
    for name, p in sorted(ports.items()):
        extra = "" if (p.priority, p.weight) == (1, 1) else f":{p.priority}:{p.weight}"
        out.append(f"{name}={p.protocol}/{p.port}{extra}")
    return ",".join(out)


def _attrs_text(attrs: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(attrs.items()))


def _lease_text(e: Endpoint) -> str:
    if e.ttl_seconds is None or e.expires_at is None:
        return "-"
    return f"{e.ttl_seconds} s, {max(0.0, e.expires_at - time.time()):.1f} s left"


def _ports_table(ports: dict[str, NamedPort]) -> str:
    rows = [
        [name, p.protocol, str(p.port), str(p.priority), str(p.weight)]
        for name, p in sorted(ports.items())
    ]
    return table(["PORT", "PROTOCOL", "NUMBER", "PRIORITY", "WEIGHT"], rows)


class Output:
    def __init__(self, mode: str, out: TextIO, err: TextIO) -> None:
        self.mode, self.out, self.err = mode, out, err

    @property
    def json(self) -> bool:
        return self.mode == "json"

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def raw(self, data: Any, *, line: bool = False) -> None:
        indent = None if line else 2
        self.print(json.dumps(data, indent=indent, ensure_ascii=False))

    def stale(self, stale: bool) -> None:
        if stale:
            print(
                "sdctl: stale: no replica reachable; this is the last good answer",
                file=self.err,
                flush=True,
            )


# ---- commands ------------------------------------------------------------------------------------
def cmd_services(sd: Client, args: argparse.Namespace, out: Output) -> int:
    services = sd.services()
    if out.json:
        out.raw([s.raw for s in services])
    else:
        rows = [
            [
                s.name,
                _ports_text(s.named_ports) or "-",
                _attrs_text(s.attributes) or "-",
                str(s.index),
            ]
            for s in sorted(services, key=lambda s: s.name)
        ]
        out.print(table(["NAME", "PORTS", "ATTRIBUTES", "INDEX"], rows))
    out.stale(services.stale)
    return EXIT_OK


def cmd_service(sd: Client, args: argparse.Namespace, out: Output) -> int:
    svc = sd.service(args.name)
    if out.json:
        out.raw(svc.raw)
    else:
        head = [
            ["name", svc.name],
            ["index", str(svc.index)],
            ["attributes", _attrs_text(svc.attributes) or "-"],
            ["ports", _ports_text(svc.named_ports) or "-"],
        ]
        out.print(table(["", ""], head, header=False))
        out.print("")
        if svc.endpoints:
            rows = [[e.ip, ",".join(e.tags) or "-", _lease_text(e)] for e in svc.endpoints]
            out.print(table(["ENDPOINT", "TAGS", "LEASE"], rows))
        else:
            out.print("no live endpoints")
    out.stale(svc.stale)
    return EXIT_OK


def cmd_create(sd: Client, args: argparse.Namespace, out: Output) -> int:
    svc = sd.create_service(args.name, attributes=dict(args.attr))
    if out.json:
        out.raw(svc.raw)
    else:
        out.print(f"created service {svc.name} (index {svc.index})")
    return EXIT_OK


def cmd_delete(sd: Client, args: argparse.Namespace, out: Output) -> int:
    sd.delete_service(args.name)
    if not out.json:  # the API answers 204, no body
        out.print(f"deleted service {args.name}")
    return EXIT_OK


def cmd_ports(sd: Client, args: argparse.Namespace, out: Output) -> int:
    ports = sd.set_ports(args.name, dict(args.ports))
    if out.json:
        out.raw({name: p.as_json() for name, p in ports.items()})
    else:
        out.print(_ports_table(ports))
    return EXIT_OK


def cmd_register(sd: Client, args: argparse.Namespace, out: Output) -> int:
    if args.ttl is None:
        endpoint = sd.register(args.name, args.ip, tags=args.tag)
        if out.json:
            out.raw(endpoint.raw)
        else:
            out.print(f"registered {endpoint.ip} in {endpoint.service_name}")
        return EXIT_OK
    return _sidecar(sd, args, out)


def _sidecar(sd: Client, args: argparse.Namespace, out: Output) -> int:
    """Hold a lease until SIGINT or SIGTERM, then deregister."""
    stop = threading.Event()
    signalled: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signalled.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        lease = sd.lease(args.name, args.ip, ttl=args.ttl, tags=args.tag).start()
        if out.json:
            out.raw({"service_name": args.name, "ip": args.ip, "ttl_seconds": args.ttl}, line=True)
        else:
            out.print(
                f"registered {args.ip} in {args.name} with a {args.ttl} s lease; renewing "
                "every ttl/3 until SIGINT or SIGTERM"
            )
        while not stop.wait(0.5):  # a short wait: signal handlers run between waits
            pass
        lease.stop()
        if not out.json:
            name = signal.Signals(signalled[0]).name if signalled else "signal"
            out.print(f"deregistered {args.ip} from {args.name} ({name})")
        return EXIT_OK
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def cmd_deregister(sd: Client, args: argparse.Namespace, out: Output) -> int:
    sd.deregister(args.name, args.ip)
    if not out.json:
        out.print(f"deregistered {args.ip} from {args.name}")
    return EXIT_OK


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _service_changes(before: Service | None, after: Service | None, first: bool) -> list[str]:
    """What a watcher of one service saw change, in words."""
    if after is None:
        return ["does not exist"] if first or before is None else ["deleted"]
    ips = ", ".join(e.ip for e in after.endpoints) or "none"
    if first:
        return [f"exists: live endpoints {ips}"]
    if before is None:
        return [f"created: live endpoints {ips}"]
    was = {e.ip: e for e in before.endpoints}
    now = {e.ip: e for e in after.endpoints}
    lines = [f"registered {ip}" for ip in now if ip not in was]
    lines += [
        f"updated {ip} (tags {','.join(now[ip].tags) or '-'})"
        for ip in now
        if ip in was and now[ip].tags != was[ip].tags
    ]
    # a lease lapsing does not move the index; a deregistration does
    gone = "lapsed" if after.index == before.index else "removed"
    lines += [f"{gone} {ip}" for ip in was if ip not in now]
    if after.named_ports != before.named_ports:
        lines.append(f"ports {_ports_text(after.named_ports) or '-'}")
    if after.attributes != before.attributes:
        lines.append(f"attributes {_attrs_text(after.attributes) or '-'}")
    return lines or ["updated"]


def _list_changes(before: Services | None, after: Services) -> list[str]:
    if before is None:
        names = ", ".join(sorted(s.name for s in after)) or "none"
        return [f"{len(after)} service{'' if len(after) == 1 else 's'}: {names}"]
    was = {s.name: s for s in before}
    now = {s.name: s for s in after}
    lines = [f"created {n}" for n in sorted(now) if n not in was]
    lines += [f"changed {n}" for n in sorted(now) if n in was and now[n].index != was[n].index]
    lines += [f"deleted {n}" for n in sorted(was) if n not in now]
    return lines or ["updated"]


def cmd_watch(sd: Client, args: argparse.Namespace, out: Output) -> int:
    # the watch ends with SIGINT or SIGTERM, and that is a success
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.name is None:
            before: Services | None = None
            for services in sd.watch():
                if out.json:
                    out.raw([s.raw for s in services], line=True)
                else:
                    for line in _list_changes(before, services):
                        out.print(f"{_now()}  index {services.registry_index}  {line}")
                before = services
        else:
            last: Service | None = None
            first = True
            for svc in sd.watch(args.name):
                if out.json:
                    out.raw(svc.raw if svc is not None else None, line=True)
                else:
                    at = str(svc.index) if svc is not None else "-"
                    for line in _service_changes(last, svc, first):
                        out.print(f"{_now()}  index {at}  {args.name}  {line}")
                last, first = svc, False
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK  # pragma: no cover - a watch does not end by itself


def cmd_resolve(sd: Client, args: argparse.Namespace, out: Output) -> int:
    addresses = sd.resolve(args.name, args.port)
    if out.json:
        out.raw([{"ip": a.ip, "port": a.port} for a in addresses])
    else:
        out.print(table(["ADDRESS", "PORT"], [[a.ip, str(a.port)] for a in addresses]))
    out.stale(addresses.stale)
    return EXIT_OK


def cmd_completion(sd: Client | None, args: argparse.Namespace, out: Output) -> int:
    out.print(completion.bash(build_parser()))
    return EXIT_OK


def cmd_names(sd: Client, args: argparse.Namespace, out: Output) -> int:
    try:
        out.print("\n".join(sorted(s.name for s in sd.services())))
    except ServiceDiscoveryError:
        pass  # completion must stay quiet
    return EXIT_OK


# ---- main ----------------------------------------------------------------------------------------
def _token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    if args.token is not None and args.token_file is not None:
        parser.error("--token and --token-file exclude each other")
    if args.token_file is None:
        return str(args.token) if args.token is not None else None
    try:
        lines = Path(args.token_file).read_text().splitlines()
    except OSError as exc:
        parser.error(f"--token-file: {exc.strerror}: {args.token_file}")
    token = next((ln.strip() for ln in lines if ln.strip()), "")
    if not token:
        parser.error(f"--token-file: no token in {args.token_file}")
    return token


def exit_code(error: ServiceDiscoveryError) -> int:
    for cls, code, _ in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(run(argv))


def run(
    argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    out_stream, err_stream = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=err_stream,
        format="sdctl: %(message)s",
        level=logging.INFO if args.verbose else logging.WARNING,
    )
    out = Output(args.output, out_stream, err_stream)
    if args.command == "completion":
        return int(cmd_completion(None, args, out))
    addr = ",".join(args.addr) if args.addr else None
    quiet = args.command == "_names"
    try:
        sd = Client(
            addr,
            token=_token(args, parser),
            timeout=1.0 if quiet else args.timeout,
            retries=0 if quiet else 2,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        with sd:
            return int(args.func(sd, args, out))
    except ServiceDiscoveryError as error:
        print(f"sdctl: {error}", file=err_stream, flush=True)
        return exit_code(error)
    except KeyboardInterrupt:
        return 130
