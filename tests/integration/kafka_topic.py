"""Reading a test's own event topic in integration tests (the `infra` fixture names one per test)."""

import time

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError


def topics(infra: dict[str, str]) -> dict[str, str]:
    """KafkaBusConfig arguments for the test's topic and its dead-letter topic, as the services name them."""
    topic = infra["CLASSFORGE_KAFKA_TOPIC"]
    return {"topic": topic, "dead_letter_topic": f"{topic}.dlq"}


def positioned_consumer(infra: dict[str, str]) -> KafkaConsumer:
    """A consumer on every partition of the test's topic, positioned at the current end, so the test
    sees only the events that follow. Creates the topic (as the services would) when it is missing."""
    bootstrap, topic = infra["CLASSFORGE_KAFKA_BOOTSTRAP"], infra["CLASSFORGE_KAFKA_TOPIC"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="it-topics")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
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
