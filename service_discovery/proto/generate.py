"""Regenerates this package's *_pb2 modules from protos/discovery.proto with grpcio-tools.

The .proto is compiled under the virtual path `service_discovery/proto/` (protoc's
`-I<virtual>=<dir>`), so the generated *_pb2_grpc.py imports
`from service_discovery.proto import discovery_pb2` and works as a package without editing
generated text. tests/test_grpc.py calls `generate()` into a temporary directory and compares
the bytes with the committed files. The output depends on the grpcio-tools version (it writes
its version into the files): regenerate with the version pinned in pyproject's dev extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_DIR = PACKAGE_DIR.parent.parent / "protos"
VIRTUAL_DIR = "service_discovery/proto"
PROTOS = ("discovery.proto",)
GENERATED = ("discovery_pb2.py", "discovery_pb2.pyi", "discovery_pb2_grpc.py")


def generate(out_root: Path) -> Path:
    """Compile every proto into `out_root`/service_discovery/proto/ and return that directory."""
    from grpc_tools import protoc  # a dev dependency, needed only here

    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{VIRTUAL_DIR}={PROTO_DIR}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{PROTO_DIR / name}" for name in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return out_root / VIRTUAL_DIR


def main() -> int:
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = generate(Path(tmp))
        for name in GENERATED:
            shutil.copyfile(out / name, PACKAGE_DIR / name)
            print(f"wrote {PACKAGE_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
