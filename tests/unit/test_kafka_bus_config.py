"""KafkaBusConfig: what a service's Kafka bus is made from. Nothing here reaches a broker."""

from __future__ import annotations

import pytest

from services.common.events import DEFAULT_OUTAGE_WINDOW_S, EVENTS_TOPIC
from services.common.events.kafka import KafkaBusConfig, KafkaEventBus
from services.common.settings import ServiceSettings


def test_a_services_bus_takes_its_topic_and_limits_from_its_settings():
    settings = ServiceSettings.load({"CLASSFORGE_S3_ENDPOINT": "minio:9000", "CLASSFORGE_S3_ACCESS_KEY": "ak",
                                     "CLASSFORGE_S3_SECRET_KEY": "sk",
                                     "CLASSFORGE_KAFKA_BOOTSTRAP": "kafka-0:9092,kafka-1:9092",
                                     "CLASSFORGE_KAFKA_TOPIC": "team.events",
                                     "CLASSFORGE_KAFKA_MAX_POLL_INTERVAL_MS": "600000",
                                     "CLASSFORGE_OUTAGE_WINDOW_SECONDS": "inf"})
    config = KafkaBusConfig.from_settings(settings, client_id="jobs")
    assert (config.bootstrap, config.client_id) == ("kafka-0:9092,kafka-1:9092", "jobs")
    assert (config.topic, config.dead_letter_topic) == ("team.events", "team.events.dlq")
    assert config.max_poll_interval_ms == 600_000 and config.outage_window_s == float("inf")


def test_the_bus_shows_its_topics_and_attempts_as_every_event_bus_does():
    bus = KafkaEventBus(KafkaBusConfig("127.0.0.1:9", "nowhere", max_attempts=5))  # no network until used
    assert (bus.topic, bus.dead_letter_topic, bus.max_attempts) == (EVENTS_TOPIC, f"{EVENTS_TOPIC}.dlq", 5)
    assert bus.config.outage_window_s == DEFAULT_OUTAGE_WINDOW_S


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"outage_window_s": -1.0}])
def test_a_config_that_could_never_deliver_is_refused(bad):
    with pytest.raises(ValueError):
        KafkaBusConfig("127.0.0.1:9", "nowhere", **bad)


def test_a_send_that_fails_drops_its_producer_so_the_next_send_makes_a_new_one(monkeypatch):
    """kafka-python's producer can stay stuck after a broker restart; a failed send must not keep it."""
    from kafka.errors import KafkaTimeoutError

    from services.common.errors import Unavailable

    class StuckProducer:
        closed = False

        def send(self, *args, **kwargs):
            raise KafkaTimeoutError("Timeout after waiting for 16.0 secs.")

        def close(self, timeout=None):
            self.closed = True

    bus = KafkaEventBus(KafkaBusConfig("127.0.0.1:9", "nowhere"))
    stuck = StuckProducer()
    made = []
    monkeypatch.setattr(bus, "_ensure_topics", lambda: None)
    monkeypatch.setattr(bus, "_check_reachable", lambda: None)
    monkeypatch.setattr("services.common.events.kafka.KafkaProducer", lambda **kwargs: made.append(kwargs) or stuck)
    with pytest.raises(Unavailable, match="did not acknowledge"):
        bus.publish_raw(b"job", b"payload")
    assert stuck.closed and bus._producer is None and len(made) == 1
    with pytest.raises(Unavailable):
        bus.publish_raw(b"job", b"payload")
    assert len(made) == 2  # a new client for the next send, not the stuck one
