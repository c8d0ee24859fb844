"""The event-bus contract on the real Kafka (deploy/local, CLASSFORGE_KAFKA_BOOTSTRAP), plus
what only a real broker shows: a consumer that crashes between its work and its commit, and
the dead-letter topic's records as other tools read them.

Every test uses topics of its own (test.<uuid>.events / .dlq), deleted at the end of the module.
Only Kafka is needed here, so this file checks Kafka alone: it FAILS (never skips) when Kafka
cannot be reached.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient

from services.common.errors import Unavailable
from services.common.events import THREAD_PREFIX, InMemoryProcessedEvents
from services.common.events.kafka import KafkaBusConfig, KafkaEventBus
from tests.contracts.event_bus_contract import EventBusContract, Recorder, progress, wait_until
from tests.integration._kafka_consumer_proc import CRASH_EXIT_CODE

pytestmark = pytest.mark.integration

KAFKA = os.environ.get("CLASSFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = dict(backoff_s=0.02, session_timeout_ms=6000, heartbeat_interval_ms=1000, poll_timeout_ms=100)


@pytest.fixture(scope="module")
def kafka() -> str:
    host, port = KAFKA.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        pytest.fail(f"Kafka is not reachable at {KAFKA} ({exc}): start it with `make infra-up` "
                    f"(deploy/local/infra.sh up) or point CLASSFORGE_KAFKA_BOOTSTRAP at a broker",
                    pytrace=False)
    return KAFKA


@pytest.fixture(scope="module")
def created_topics(kafka):
    topics: list[str] = []
    yield topics
    if topics:
        try:
            admin = KafkaAdminClient(bootstrap_servers=kafka, client_id="test-cleanup", request_timeout_ms=10_000)
            try:
                admin.delete_topics(topics, raise_errors=False)
            finally:
                admin.close()
        except Exception as exc:  # noqa: BLE001 - leftover test topics are harmless
            warnings.warn(f"could not delete the test topics: {exc}", stacklevel=1)


def make_bus(kafka: str, created_topics: list[str], **overrides) -> KafkaEventBus:
    run = uuid.uuid4().hex[:12]
    topic, dead_letter_topic = f"test.{run}.events", f"test.{run}.events.dlq"
    created_topics += [topic, dead_letter_topic]
    options = dict(client_id="contract-test", topic=topic, dead_letter_topic=dead_letter_topic, **FAST)
    options.update(overrides)
    return KafkaEventBus(KafkaBusConfig(kafka, **options), InMemoryProcessedEvents())


_groups = itertools.count()


@pytest.fixture
def make_group():
    run = uuid.uuid4().hex[:8]
    return lambda: f"test-{run}-{next(_groups)}"


class TestKafkaEventBus(EventBusContract):
    timeout = 30.0

    @pytest.fixture
    def bus(self, kafka, created_topics):
        bus = make_bus(kafka, created_topics)
        yield bus
        bus.close()


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_crash_between_work_and_commit_is_redelivered_and_handled_once(kafka, created_topics, tmp_path):
    publisher = make_bus(kafka, created_topics)
    sent = [progress(f"job-{i % 3}", i) for i in range(9)]
    for event in sent:
        publisher.publish(event)
    publisher.close()

    out, skipped = tmp_path / "handled.txt", tmp_path / "skipped.txt"
    command = [sys.executable, "-m", "tests.integration._kafka_consumer_proc", "--bootstrap", kafka,
               "--topic", publisher.topic, "--dead-letter-topic", publisher.dead_letter_topic,
               "--group", f"crash-{uuid.uuid4().hex[:8]}", "--store", str(tmp_path / "store"),
               "--out", str(out), "--skipped", str(skipped)]
    path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen" / "python"),
                            os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.run(command + ["--crash-before-first-commit"], cwd=REPO_ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, timeout=60)
    first_log = (tmp_path / "first.log").read_text()
    assert first.returncode == CRASH_EXIT_CODE, f"the first consumer did not crash at its first commit:\n{first_log}"
    crashed_on = _lines(out)
    assert len(crashed_on) == 1, f"handled before the crash: {crashed_on}\n{first_log}"

    second_log = (tmp_path / "second.log").open("wb")
    second = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=second_log, stderr=subprocess.STDOUT)
    try:
        # The dead first member holds its partitions until its session (6 s) expires.
        wait_until(lambda: len(_lines(out)) >= len(sent) and crashed_on[0] in _lines(skipped), 60,
                   "the restarted consumer to handle the rest")
        time.sleep(1.0)  # nothing more may arrive
    finally:
        second.terminate()
        code = second.wait(30)
        second_log.close()
    handled = _lines(out)
    assert sorted(handled) == sorted(e.event_id for e in sent), "every event handled exactly once"
    assert _lines(skipped) == crashed_on, "the uncommitted event came back and was dropped as a duplicate"
    assert code == 0, (tmp_path / "second.log").read_text()


def test_the_dead_letter_record_carries_the_original_and_the_reason(kafka, created_topics, make_group):
    bus = make_bus(kafka, created_topics)
    group = make_group()
    try:
        bad = progress("job-dlq", 1)
        bus.subscribe(group, Recorder(fail=lambda event, attempt: True))
        bus.publish(bad)
        reader = KafkaConsumer(bus.dead_letter_topic, bootstrap_servers=kafka, auto_offset_reset="earliest",
                               enable_auto_commit=False, group_id=None, consumer_timeout_ms=30_000)
        try:
            record = next(iter(reader))
        finally:
            reader.close()
    finally:
        bus.close()
    assert record.key == b"job-dlq" and record.value == bad.SerializeToString()
    headers = {name: value.decode() for name, value in record.headers}
    assert headers["reason"].startswith(f"RuntimeError: boom on {bad.event_id}")
    assert headers["group"] == group and headers["attempts"] == "3"
    assert headers["source_topic"] == bus.topic
    assert int(headers["source_partition"]) >= 0 and headers["source_offset"] == "0"


def test_an_unreachable_broker_is_unavailable_and_consumers_keep_trying():
    threads_before = threading.active_count()
    bus = KafkaEventBus(KafkaBusConfig("127.0.0.1:9", client_id="nowhere", publish_timeout_s=1.0, backoff_s=0.05,
                                       topic=f"test.{uuid.uuid4().hex}.events"))
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="127.0.0.1:9"):
            bus.ping()
        with pytest.raises(Unavailable, match="127.0.0.1:9"):
            bus.publish(progress("job-1", 1))
        assert time.monotonic() - started < 10
        bus.subscribe("nowhere", Recorder())
        time.sleep(1.5)
        alive = [t for t in threading.enumerate() if t.name == f"{THREAD_PREFIX}-nowhere"]
        assert alive, "the consumer thread died"
    finally:
        started = time.monotonic()
        bus.close(timeout=10)
    assert time.monotonic() - started < 10
    assert not [t for t in threading.enumerate() if t.name == f"{THREAD_PREFIX}-nowhere"]
    assert threading.active_count() <= threads_before, [t.name for t in threading.enumerate()]
