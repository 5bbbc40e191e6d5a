"""The layout holds: each front-end reaches the registry only through the catalog, and no module
grows too long to read.

Modules are found by scanning service_discovery/ and front-ends are told apart by module name,
so a module that is added, moved or split (a front-end becoming a package) is checked as it is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import service_discovery
from service_discovery.catalog import Catalog

PACKAGE = Path(service_discovery.__file__).parent
GENERATED = PACKAGE / "proto"  # protoc's output: not ours to shape
MAX_LINES = 400

# front-end -> the names of its modules (the first name under service_discovery: a module or a
# package); a new front-end (the Consul-compatible API, the dashboard) gets a line here.
FRONT_ENDS = {
    "http": ("http_api", "http_*"),
    "grpc": ("grpc_api", "grpc_*"),
    "dns": ("dns", "resolver"),
    "consul": ("consul_*", "prometheus_sd"),  # served on the HTTP front-end's app, under /v1/
    "ui": ("ui",),
}
# What a front-end must not import: the registry copy (it reads through the catalog), the
# storage and what keeps the copy fresh, and the process around it.
FORBIDDEN = tuple(
    f"service_discovery.{name}"
    for name in ("cache", "registry", "store", "sync", "leases", "notify", "app", "cli")
)


def _modules() -> dict[str, Path]:
    """Every module of the package (generated code aside), by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if GENERATED in path.parents:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _front_end(module: str) -> str | None:
    """The front-end a module of ours belongs to, or None (shared, or not ours)."""
    package, _, rest = module.partition(".")
    if package != "service_discovery" or not rest:
        return None
    top = rest.split(".")[0]
    for front_end, names in FRONT_ENDS.items():
        if any(Path(top).match(name) for name in names):
            return front_end
    return None


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def _imports(module: str, source: str, *, is_package: bool = False) -> set[str]:
    """Every module that `module` imports (also under TYPE_CHECKING, also relatively); for
    `from a import b`, both a and a.b, since b may be a module."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = _modules()
FRONT_END_MODULES = sorted(m for m in MODULES if _front_end(m) is not None)


def _imports_of(module: str) -> set[str]:
    path = MODULES[module]
    return _imports(module, path.read_text(), is_package=path.name == "__init__.py")


def test_every_front_end_is_found() -> None:
    assert {_front_end(m) for m in FRONT_END_MODULES} == set(FRONT_ENDS)


@pytest.mark.parametrize("module", FRONT_END_MODULES)
def test_front_end_modules_go_through_the_catalog(module: str) -> None:
    """Not the registry copy, the store, sync, leases, or another front-end."""
    own = _front_end(module)
    wrong = sorted(
        name
        for name in _imports_of(module)
        if _forbidden(name) or _front_end(name) not in (None, own)
    )
    assert not wrong, f"{module} imports {wrong}"


def _protocols(module: str) -> dict[str, set[str]]:
    """The typing.Protocol classes a module declares, with their members' names."""
    found = {}
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ClassDef) and any(
            ast.unparse(base).split(".")[-1] == "Protocol" for base in node.bases
        ):
            found[node.name] = {
                item.name if isinstance(item, ast.FunctionDef) else ast.unparse(item.target)
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AnnAssign)
            }
    return found


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
def test_each_front_end_talks_to_the_catalog(front_end: str) -> None:
    """It imports the catalog, or states what it reads as a Protocol made of the Catalog's
    members (the DNS resolver stays a pure function of what it is handed)."""
    modules = [m for m in FRONT_END_MODULES if _front_end(m) == front_end]
    if any("service_discovery.catalog" in _imports_of(m) for m in modules):
        return
    offered = set(dir(Catalog)) | set(Catalog.__annotations__)
    reads = [
        members
        for m in modules
        for members in _protocols(m).values()
        if members and members <= offered
    ]
    assert reads, f"{front_end}: none of {modules} imports the catalog or reads it by a Protocol"


def test_the_scanner_sees_every_kind_of_import() -> None:
    source = """
import service_discovery.store
from service_discovery import registry
from service_discovery.sync import Sync
from . import wire
from .answers import Answers
from .. import leases
from ..catalog import Catalog
if TYPE_CHECKING:
    from service_discovery.http_api import HttpServer
"""
    found = _imports("service_discovery.dns.handler", source)
    wrong = {n for n in found if _forbidden(n) or _front_end(n) not in (None, "dns")}
    assert wrong == {
        "service_discovery.store",
        "service_discovery.registry",
        "service_discovery.sync",
        "service_discovery.sync.Sync",
        "service_discovery.leases",
        "service_discovery.http_api",
        "service_discovery.http_api.HttpServer",
    }
    assert {"service_discovery.dns.wire", "service_discovery.catalog"} <= found
    assert _front_end("service_discovery.dns.wire") == "dns"
    assert _front_end("service_discovery.grpc_codec") == "grpc"
    assert _front_end("grpc.aio") is None and _front_end("service_discovery.catalog") is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_400_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines"
