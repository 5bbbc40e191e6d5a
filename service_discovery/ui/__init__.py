"""The web dashboard: its static files under /ui/, and the API route it shows DNS from.

This module owns what the HTTP listener serves for the dashboard: the page and its ES modules
(`static/`, read once at start, kept in memory), their caching and security headers, the
redirect from `/`, and `GET /service/{name}/dns`: the records DNS serves for a service's names,
as the DNS front-end's own resolver answers them (handed in as `describe`: this module does not
know how DNS works, and the page never computes a record).

Static files are open whatever the tokens (the API calls the page makes are checked as any
other call, and the page asks for a token on 401). Assets are served under a build id, a hash of
their content, so they can be cached for good; the page itself is revalidated on every load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from service_discovery.catalog import Catalog
from service_discovery.config import Config
from service_discovery.model import Service
from service_discovery.watch import AnswerCache, Answers

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}
# Everything from this origin, nothing inline, no HTML sinks (Trusted Types: assigning a string
# to innerHTML throws), no framing. The page renders registry values as text only.
CSP = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'; require-trusted-types-for 'script'; trusted-types 'none'"
)
_SECURITY = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"  # keep it, but ask each time (answered 304 while unchanged)


class RecordSet(Protocol):
    """One DNS question and its answer, as the DNS front-end describes it."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def answer(self) -> Sequence[str]: ...  # zone-file lines
    @property
    def additional(self) -> Sequence[str]: ...
    @property
    def count(self) -> int: ...  # records in the answer, listed or not


class ServiceRecords(Protocol):
    @property
    def sets(self) -> Sequence[RecordSet]: ...
    @property
    def tags_left_out(self) -> int: ...


Describe = Callable[[Service], ServiceRecords]


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class _Dns:
    catalog: Catalog
    body: Answers[bytes]  # a service's records, encoded once per view of the service


_DNS = web.AppKey("ui_dns", _Dns)
_FILES = web.AppKey[dict[str, _File]]("ui_files")
_BUILD = web.AppKey("ui_build", str)


def add_routes(
    app: web.Application,
    config: Config,
    catalog: Catalog,
    answers: AnswerCache,
    describe: Describe,
    dns_port: Callable[[], int],
) -> None:
    """`GET /service/{name}/dns` always; the dashboard (`/ui/`, and `/` redirecting there)
    unless SD_UI=false. `describe` gives the DNS front-end's records for a service, `dns_port`
    the port it listens on (for the dig commands the page shows)."""

    def encode(svc: Service) -> bytes:
        data = _records_json(svc, describe(svc), config.dns_domain, dns_port())
        return json.dumps(data, ensure_ascii=False).encode()

    app[_DNS] = _Dns(catalog, answers.format(encode))
    app.router.add_get("/service/{name}/dns", dns_records)
    if not config.ui:
        return
    files, build = load_static()
    app[_FILES] = files
    app[_BUILD] = build
    app.router.add_get("/", to_dashboard)
    app.router.add_get("/ui", to_dashboard)
    app.router.add_get("/ui/", page)
    app.router.add_get("/ui/{build}/{file}", asset)


def load_static() -> tuple[dict[str, _File], str]:
    """The files of `static/` by name, and the build id: a hash of all of them."""
    folder = resources.files(__name__).joinpath("static")
    raw = {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and "." + entry.name.rpartition(".")[2] in _TYPES
    }
    digest = hashlib.sha256()
    for name in sorted(raw):
        digest.update(name.encode() + b"\0" + raw[name] + b"\0")
    build = digest.hexdigest()[:12]
    # The page names its assets under the build id, relative to /ui/ (a proxy may add a prefix).
    raw["index.html"] = raw["index.html"].replace(b"{build}", build.encode())
    files = {}
    for name, body in raw.items():
        kind = _TYPES["." + name.rpartition(".")[2]]
        if kind.startswith("text/") or kind.endswith("+xml"):
            kind += "; charset=utf-8"
        files[name] = _File(body, kind, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return files, build


def _send(request: web.Request, file: _File, cache: str) -> web.Response:
    headers = {**_SECURITY, "Cache-Control": cache, "ETag": file.etag}
    if file.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = file.content_type
    return web.Response(body=file.body, headers=headers)


async def to_dashboard(request: web.Request) -> web.Response:
    # relative, so that it holds behind a proxy that serves us under a prefix: / and /ui both
    # resolve it to /ui/
    return web.Response(status=302, headers={"Location": "ui/"})


async def page(request: web.Request) -> web.Response:
    return _send(request, request.app[_FILES]["index.html"], _REVALIDATE)


async def asset(request: web.Request) -> web.Response:
    """An asset of this build is cached for good; one asked for under another build (a page
    loaded before an upgrade) gets today's file, revalidated."""
    file = request.app[_FILES].get(request.match_info["file"])
    if file is None or request.match_info["file"] == "index.html":
        raise web.HTTPNotFound()
    current = request.match_info["build"] == request.app[_BUILD]
    return _send(request, file, _IMMUTABLE if current else _REVALIDATE)


async def dns_records(request: web.Request) -> web.Response:
    """The records DNS serves for a service's names, encoded once per view of the service."""
    state = request.app[_DNS]
    svc = state.catalog.get(request.match_info["name"])
    body = state.body(svc)
    if request.query.get("pretty", "").lower() in ("1", "true", "yes"):
        body = json.dumps(json.loads(body), indent=2, ensure_ascii=False).encode()
    return web.json_response(body=body, headers={"X-Index": str(svc.version)})


def _records_json(svc: Service, records: ServiceRecords, zone: str, port: int) -> dict[str, Any]:
    return {
        "service": svc.name,
        "index": svc.version,
        "zone": zone,
        "dns_port": port,
        "records": [
            {
                "name": s.name,
                "type": s.type,
                "status": s.status,
                "answer": list(s.answer),
                "additional": list(s.additional),
                "count": s.count,
            }
            for s in records.sets
        ],
        "tags_left_out": records.tags_left_out,
    }
