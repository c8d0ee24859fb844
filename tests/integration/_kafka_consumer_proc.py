"""A consumer of the Kafka event bus in its own process, for the crash test in
test_kafka_event_bus.py. It appends the id of every event it handles to --out (one per line,
fsync'd) and the id of every event its dedup log reports as already processed to --skipped.

With --crash-before-first-commit it dies hard (os._exit, no cleanup, no LeaveGroup) at its
first offset commit, i.e. after the first event was handled and marked but before Kafka
learnt about it. Otherwise it runs until SIGTERM, then closes the bus and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from kafka import KafkaConsumer

from services.common.events import ObjectStoreProcessedEvents, ProcessedEvents
from services.common.events.kafka import KafkaBusConfig, KafkaEventBus
from services.common.storage import LocalObjectStore

CRASH_EXIT_CODE = 17


class RecordingProcessed(ProcessedEvents):
    def __init__(self, inner: ProcessedEvents, skipped_path: str):
        self.inner, self.skipped_path = inner, skipped_path

    def seen(self, group: str, event_id: str) -> bool:
        seen = self.inner.seen(group, event_id)
        if seen:
            _append(self.skipped_path, event_id)
        return seen

    def mark(self, group: str, event_id: str) -> None:
        self.inner.mark(group, event_id)


def _append(path: str, line: str) -> None:
    with open(path, "a") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--topic", "--dead-letter-topic", "--group", "--store", "--out", "--skipped"):
        parser.add_argument(name, required=True)
    parser.add_argument("--crash-before-first-commit", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)

    if args.crash_before_first_commit:
        def crash(self, *args, **kwargs):
            logging.getLogger("crash-test").warning("crashing before the first commit")
            sys.stderr.flush()
            os._exit(CRASH_EXIT_CODE)

        KafkaConsumer.commit = crash

    processed = RecordingProcessed(ObjectStoreProcessedEvents(LocalObjectStore(args.store)), args.skipped)
    config = KafkaBusConfig(args.bootstrap, client_id="crash-test", topic=args.topic,
                            dead_letter_topic=args.dead_letter_topic, backoff_s=0.05, session_timeout_ms=6000,
                            heartbeat_interval_ms=1000, poll_timeout_ms=100)
    bus = KafkaEventBus(config, processed)
    bus.subscribe(args.group, lambda event: _append(args.out, event.event_id))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.1):
        pass
    bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
