"""One row of the benchmark table: a measured value against a baseline measured in the same run."""

from __future__ import annotations

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
