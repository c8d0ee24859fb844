"""One row of the benchmark table: a measured value against a baseline measured in the same run."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    stage: str
    metric: str
    value: float
    baseline_name: str
    baseline: float
    unit: str
    higher_is_better: bool = True
    target: float | None = None  # the ratio the issue asks for, if any

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


def render(rows: list[Row]) -> str:
    header = f"{'stage':<10} {'metric':<34} {'value':>12} {'baseline':>12} {'ratio':>7} {'target':>7}  baseline is"
    lines = [header, "-" * len(header)]
    for r in rows:
        target = f"{r.target:.2f}x" if r.target is not None else ""
        lines.append(f"{r.stage:<10} {r.metric:<34} {r.value:>10.1f}{r.unit[:2]:>2} {r.baseline:>10.1f}{r.unit[:2]:>2}"
                     f" {r.ratio:>6.2f}x {target:>7}  {r.baseline_name}")
    return "\n".join(lines)


def machine() -> str:
    """The CPU and its load, printed beside every table: absolute times mean nothing without them (an AVX-512
    machine trains 6-7x faster than a 2-core AVX2 one) and a loaded machine moves every ratio."""
    from services.trainer.recipe import detect_hardware  # what the trainer's recipe sees: cores, ISA, GPUs

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}: {detect_hardware().describe()}; load average (1/5/15 min) {load}"
