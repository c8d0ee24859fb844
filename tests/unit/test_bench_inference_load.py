"""`python -m bench.inference --load`, briefly: the four protocols are each called, every answer is checked,
and a failed call is counted and fails the run. No timing is asserted (bench/ reports it)."""

import time

from bench import inference_load
from bench.inference_load import PROTOCOLS, _run


def test_a_short_load_run_calls_every_protocol_without_an_error():
    result = inference_load.run_load(seconds=2, concurrency=8)
    assert result.errors == 0, result.render()
    rows = {r["protocol"]: r for r in result.rows()}
    assert sorted(rows) == sorted(PROTOCOLS)
    assert all(r["requests"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows.values()), rows
    assert result.passed


class FailingClients:
    """REST classify fails for image 0 (every third of its calls); the other protocols succeed."""

    images = [b"a", b"b", b"c"]

    def factory(self, protocol):
        def call(i):
            time.sleep(0.002)  # a call takes a moment, so every thread gets some of the budget
            if protocol == "rest classify" and i == 0:
                raise AssertionError("wrong answer for image 0")
        return call


def test_failed_calls_are_counted_reported_and_fail_the_run():
    result = _run(FailingClients(), concurrency=4, seconds=0.2, max_requests=60)
    rows = {r["protocol"]: r for r in result.rows()}
    assert sum(r["requests"] for r in rows.values()) == 60  # bounded in count before the deadline
    assert rows["rest classify"]["errors"] > 0 and result.errors == rows["rest classify"]["errors"]
    assert "wrong answer for image 0" in result.render()
    assert not result.passed
