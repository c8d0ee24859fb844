"""Generates the Python protobuf/gRPC code for protos/ into one package.

`make protos` calls this; the staleness test calls `generate` into a scratch folder and
compares, so there is exactly one way the generated code comes to be.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
GEN_ROOT = REPO_ROOT / "gen" / "python"


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(proto_root.rglob("*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under proto_root into out_dir."""
    well_known = resources.files("grpc_tools") / "_proto"  # grpc_tools is a dev dependency
    files = [str(p.relative_to(proto_root)) for p in proto_files(proto_root)]
    with tempfile.TemporaryDirectory() as scratch:
        # protoc runs in its own process: in-process it can crash a Python that already
        # imported TensorFlow (both bundle protobuf's C++ runtime).
        args = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *files,
        ]
        if subprocess.run(args).returncode != 0:
            raise RuntimeError("protoc failed; see the messages above")
        # Every directory holding generated modules becomes a package.
        for folder in [Path(scratch), *Path(scratch).rglob("*")]:
            if folder.is_dir() and folder != Path(scratch):
                (folder / "__init__.py").touch()
        # Replace the old tree in one step so no stale module survives a removed proto.
        for top in Path(scratch).iterdir():
            target = out_dir / top.name
            if target.exists():
                shutil.rmtree(target)
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(top, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=GEN_ROOT)
    args = parser.parse_args(argv)
    generate(args.out.resolve())
    print(f"generated {len(proto_files())} protos into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
