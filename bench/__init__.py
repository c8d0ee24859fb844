"""Benchmarks: each module exposes `run() -> list[Row]`, measuring a baseline in the same run."""
