"""bench/gpu.sh and bench.gpu (#19 item 5): a clear "no GPU" exit on a machine without one, and the
measuring code run end to end on the CPU at toy sizes (--smoke), so the script is known to work before
it meets a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    # CUDA_VISIBLE_DEVICES="": no GPU even on a machine that has one, so the tests mean the same everywhere
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}", "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def test_gpu_sh_without_a_gpu_says_so_and_exits_2(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                   "exit 9\n")
    smi.chmod(0o755)
    done = subprocess.run([str(ROOT / "bench" / "gpu.sh")], capture_output=True, text=True, timeout=60,
                          env=_env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable))
    assert done.returncode == 2, done.stderr
    assert "no GPU" in done.stderr and "did not run" in done.stderr


def test_python_part_without_a_gpu_exits_2_naming_the_cause():
    done = subprocess.run([sys.executable, "-m", "bench.gpu"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=_env())
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no GPU" in done.stderr and "--smoke" in done.stderr
    assert "images/s" not in done.stdout  # nothing measured


def test_smoke_run_measures_both_loops_on_the_cpu():
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--backbone", "small_cnn"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["setup"] for r in rows] == ["CPU"]
    row = rows[0]
    assert row["size"] == 32 and row["mixed_precision"] is True
    assert row["trainer_images_per_second"] > 0 and row["keras_images_per_second"] > 0
    assert abs(row["ratio"] - row["trainer_images_per_second"] / row["keras_images_per_second"]) < 1e-9
    assert "model.fit img/s" in done.stdout  # the table


def test_unknown_backbone_is_refused_with_the_choices():
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--backbone", "resnet5"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env())
    assert done.returncode == 2
    assert "'resnet5' is not one of" in done.stderr and "resnet50" in done.stderr
