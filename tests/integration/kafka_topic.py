"""Reading the real event topic in integration tests."""

import time

from kafka import KafkaConsumer, TopicPartition

from services.common.events import EVENTS_TOPIC


def positioned_consumer(bootstrap: str, topic: str = EVENTS_TOPIC) -> KafkaConsumer:
    """A consumer on every partition of the topic, positioned at the current end, so a test sees
    only the events that follow (the topic is shared with every other test of the run)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=500)
    deadline = time.monotonic() + 30
    while not consumer.partitions_for_topic(topic):
        assert time.monotonic() < deadline, f"topic {topic} never appeared"
        time.sleep(0.5)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    for tp, offset in consumer.end_offsets(partitions).items():
        consumer.seek(tp, offset)
    return consumer
