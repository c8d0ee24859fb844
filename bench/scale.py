"""Do the data stages stay flat as the data grows? (#19 item 4)

For each size N: N small generated PNGs (28x28 RGB noise, so no two are alike, in 10 label folders) are
written to a scratch folder on disk (not timed), then two stages run, each in a child process of its
own so that its peak memory is its own:

1. ingest: `prepare_dataset` of the folder into a local object store (walk, validate, de-duplicate,
   split, balance, write images, lists, hashes, report and manifest), 2 CPUs;
2. records: `RecordsBuilder.build` of that dataset with 2 encoding workers.

Per stage and size it reports wall time per image and the peak resident memory: of the stage's main
process (`self`, where the per-image bookkeeping lives) and of the whole process tree (`tree`, from
wait4: the largest of the main process and its waited-for workers). The target the issue sets: time per
image within 1.3x and memory within 2x from the smallest size to the largest.

    PYTHONPATH=.:gen/python .venv/bin/python -m bench.scale --sizes 7000,70000,350000

Timing lives here, never in tests. The scratch folder needs ~12 KB of disk per image (three copies
of each small file plus sidecars, in 4 KB blocks); --keep leaves it for a look.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

CLASSES = 10
SIDE = 28
FILES_PER_FOLDER_BATCH = 10_000
DATASET_ID = "scale"


# --------------------------------------------------------------------------- data


def _png(side: int, pixels: bytes) -> bytes:
    """A PNG of `side` x `side` RGB pixels, framed by hand (zlib + CRCs): ~20 µs an image, where
    Pillow's encoder takes several times that, so generating 350,000 stays a minute's work."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = side * 3
    raw = b"".join(b"\x00" + pixels[y * row:(y + 1) * row] for y in range(side))
    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def generate(root: Path, count: int, seed: int = 19) -> None:
    """`count` distinct PNGs in CLASSES label folders (class-i/<n>.png)."""
    rng = _Random(seed)
    folders = [root / f"class-{i}" for i in range(CLASSES)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    size = SIDE * SIDE * 3
    for n in range(count):
        (folders[n % CLASSES] / f"{n:07d}.png").write_bytes(_png(SIDE, rng.bytes(size)))


class _Random:
    """Fast reproducible bytes: os.urandom would do, but a seed makes the runs repeatable."""

    def __init__(self, seed: int):
        import random

        self._rng = random.Random(seed)

    def bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n)


# --------------------------------------------------------------------------- the measured stages (child side)


def _child(stage: str, source: Path, store_dir: Path) -> None:
    """Runs one stage and prints {"seconds", "self_maxrss_kb", "images"} as its last line."""
    from services.common.storage import LocalObjectStore

    store = LocalObjectStore(store_dir)
    if stage == "ingest":
        from services.common.dataset_options import IngestOptions
        from services.ingest.prepare import local_source, prepare_dataset

        started = time.perf_counter()
        prepared = prepare_dataset(source, store, f"datasets/{DATASET_ID}/", IngestOptions(seed=1),
                                   dataset_id=DATASET_ID, source=local_source(source), workers=2)
        seconds = time.perf_counter() - started
        images = prepared.counts["images"]
    elif stage == "records":
        from services.tfrecords.builder import BuildOptions, RecordsBuilder

        started = time.perf_counter()
        result = RecordsBuilder(workers=2).build(store, DATASET_ID, BuildOptions())
        seconds = time.perf_counter() - started
        images = sum(result.manifest["counts"].values())
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    print(json.dumps({"seconds": seconds, "images": images,
                      "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def run_stage(stage: str, source: Path, store_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [".", "gen/python", os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "bench.scale", "--child", stage, "--source", str(source),
                             "--store", str(store_dir)], stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"stage {stage} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["tree_maxrss_kb"] = usage.ru_maxrss
    return result


# --------------------------------------------------------------------------- the table


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {os.cpu_count()} CPUs"


def render(rows: list[dict]) -> str:
    header = (f"{'stage':<8} {'images':>8} {'seconds':>9} {'µs/image':>9} {'x smallest':>10} "
              f"{'self MB':>8} {'tree MB':>8} {'x smallest':>10}  load avg before")
    lines = [header, "-" * len(header)]
    first: dict[str, dict] = {}
    for r in rows:
        base = first.setdefault(r["stage"], r)
        per = r["seconds"] / r["images"] * 1e6
        base_per = base["seconds"] / base["images"] * 1e6
        lines.append(f"{r['stage']:<8} {r['images']:>8} {r['seconds']:>9.1f} {per:>9.0f} {per / base_per:>9.2f}x "
                     f"{r['self_maxrss_kb'] / 1024:>8.0f} {r['tree_maxrss_kb'] / 1024:>8.0f} "
                     f"{r['self_maxrss_kb'] / base['self_maxrss_kb']:>9.2f}x  {r['load']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="7000,70000", help="comma-separated image counts")
    parser.add_argument("--scratch", default=None, help="folder for the generated data (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="leave the scratch folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, Path(args.source), Path(args.store))
        return 0
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < CLASSES * 2:
        parser.error(f"--sizes needs image counts of at least {CLASSES * 2}")
    print(f"machine: {machine()}", flush=True)
    rows = []
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"classforge-scale-{size}-", dir=args.scratch))
        try:
            started = time.perf_counter()
            generate(work / "source", size)
            print(f"  {size} PNGs generated in {time.perf_counter() - started:.0f}s (not timed)", file=sys.stderr,
                  flush=True)
            for stage in ("ingest", "records"):
                load = "/".join(f"{x:.2f}" for x in os.getloadavg())
                result = run_stage(stage, work / "source", work / "store")
                rows.append({"stage": stage, "load": load, **result})
                print(f"  {stage} {size}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    rows.sort(key=lambda r: (r["stage"] != "ingest", r["images"]))
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
