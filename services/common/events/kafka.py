"""Distributed mode's event bus on Kafka (kafka-python). The only module that imports kafka-python,
so only the composition roots that choose Kafka pay for loading it.

The producer uses acks=all and idempotence; each subscription has its own consumer (one thread),
whose offsets are committed synchronously after the work is done. A group that has never consumed
starts at the beginning of the topic (auto_offset_reset=earliest).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import AuthorizationError, IllegalStateError, TopicAlreadyExistsError, for_code

from classforge.v1 import events_pb2
from services.common.errors import Unavailable
from services.common.events.delivery import (
    DEFAULT_OUTAGE_WINDOW_S,
    THREAD_PREFIX,
    Backoff,
    DeadLetter,
    Delivery,
    InMemoryProcessedEvents,
    Outcome,
    ProcessedEvents,
    Stopping,
    check_consumers_alive,
    failure_reason,
    join_consumers,
    outage_window,
)
from services.common.events.envelope import check_kinds, check_publishable
from services.common.events.interface import (
    DEAD_LETTER_TOPIC,
    EVENTS_TOPIC,
    DeadLetterHandler,
    EventBus,
    Handler,
)

if TYPE_CHECKING:
    from services.common.settings import ServiceSettings

log = logging.getLogger("classforge.events")

SECRET_OPTIONS = ("sasl_plain_password", "ssl_password")


class _RedactClientSecrets(logging.Filter):
    """kafka-python's KafkaAdminClient logs its whole configuration at DEBUG, SASL password included.
    This filter, on that logger, replaces the secret values before any handler sees the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        # LogRecord unwraps a lone dict argument, so args is that dict (this case) or a tuple.
        if isinstance(record.args, dict):
            record.args = _redacted(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) if isinstance(arg, dict) else arg for arg in record.args)
        return True


def _redacted(options: dict) -> dict:
    return {key: "***" if key in SECRET_OPTIONS and value else value for key, value in options.items()}


logging.getLogger("kafka.admin.client").addFilter(_RedactClientSecrets())


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How every client of the bus (producer, consumers, admin) authenticates to the brokers and protects
    the connection: TLS (SSL), SASL/SCRAM, or both (SASL_SSL). The password is kept out of the repr."""

    protocol: str = "PLAINTEXT"
    ssl_ca: str = ""
    ssl_cert: str = ""
    ssl_key: str = ""
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"Kafka security protocol {self.protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> KafkaSecurity:
        """Checks the CLASSFORGE_KAFKA_* security variables together; a bad combination raises SettingsError
        naming the variable (a missing CA file or SCRAM password is reported at start, not as a client
        that silently never connects)."""
        from services.common.settings import SettingsError, check_readable_file

        protocol = settings.kafka_security_protocol.strip().upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise SettingsError(f"CLASSFORGE_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol!r} is not "
                                f"one of {', '.join(SECURITY_PROTOCOLS)}")
        ssl_vars = {"CLASSFORGE_KAFKA_SSL_CA": settings.kafka_ssl_ca,
                    "CLASSFORGE_KAFKA_SSL_CERT": settings.kafka_ssl_cert,
                    "CLASSFORGE_KAFKA_SSL_KEY": settings.kafka_ssl_key}
        sasl_vars = {"CLASSFORGE_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
                     "CLASSFORGE_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
                     "CLASSFORGE_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password}
        if protocol in ("SSL", "SASL_SSL"):
            if not settings.kafka_ssl_ca:
                raise SettingsError(f"CLASSFORGE_KAFKA_SSL_CA is required with CLASSFORGE_KAFKA_SECURITY_PROTOCOL="
                                    f"{protocol} (the CAs that sign the brokers' certificates)")
            if bool(settings.kafka_ssl_cert) != bool(settings.kafka_ssl_key):
                missing = "CLASSFORGE_KAFKA_SSL_KEY" if settings.kafka_ssl_cert else "CLASSFORGE_KAFKA_SSL_CERT"
                raise SettingsError(f"{missing} is required when the other half of the client certificate is set")
            for name, path in ssl_vars.items():
                if path:
                    check_readable_file(name, path)
        else:
            for name, value in ssl_vars.items():
                if value:
                    raise SettingsError(f"{name} is set but CLASSFORGE_KAFKA_SECURITY_PROTOCOL={protocol} does not "
                                        f"use TLS (use SSL or SASL_SSL)")
        mechanism = settings.kafka_sasl_mechanism.strip().upper()
        if protocol.startswith("SASL_"):
            if mechanism not in SASL_MECHANISMS:
                raise SettingsError(f"CLASSFORGE_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism!r} must be "
                                    f"one of {', '.join(SASL_MECHANISMS)} with "
                                    f"CLASSFORGE_KAFKA_SECURITY_PROTOCOL={protocol}")
            for name in ("CLASSFORGE_KAFKA_SASL_USERNAME", "CLASSFORGE_KAFKA_SASL_PASSWORD"):
                if not sasl_vars[name]:
                    raise SettingsError(f"{name} is required with CLASSFORGE_KAFKA_SECURITY_PROTOCOL={protocol}")
        else:
            for name, value in sasl_vars.items():
                if value:
                    raise SettingsError(f"{name} is set but CLASSFORGE_KAFKA_SECURITY_PROTOCOL={protocol} does not "
                                        f"use SASL (use SASL_SSL or SASL_PLAINTEXT)")
        return cls(protocol, settings.kafka_ssl_ca, settings.kafka_ssl_cert, settings.kafka_ssl_key,
                   mechanism if protocol.startswith("SASL_") else "", settings.kafka_sasl_username,
                   settings.kafka_sasl_password)

    def client_options(self) -> dict[str, Any]:
        """kafka-python's keyword arguments, the same for KafkaProducer, KafkaConsumer and KafkaAdminClient.
        Host names are checked against the brokers' certificates (kafka-python's default, kept)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_ssl:
            options.update(ssl_cafile=self.ssl_ca or None, ssl_certfile=self.ssl_cert or None,
                           ssl_keyfile=self.ssl_key or None, ssl_check_hostname=True)
        if self.uses_sasl:
            options.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.sasl_password)
        return options


@dataclass(frozen=True)
class KafkaBusConfig:
    """How a KafkaEventBus reaches and uses the cluster. `from_settings` is what services use; the
    other fields have defaults for a small cluster and are tuned by tests (short timeouts)."""

    bootstrap: str
    client_id: str
    topic: str = EVENTS_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    max_attempts: int = 3
    backoff_s: float = 0.5
    # topics the bus creates when they are missing
    partitions: int = 3
    replication_factor: int = 1
    # consumers
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    max_poll_records: int = 100
    poll_timeout_ms: int = 500
    # publishing and the admin client
    publish_timeout_s: float = 15.0
    request_timeout_ms: int = 5_000
    commit_timeout_ms: int = 10_000
    close_timeout_ms: int = 5_000
    outage_window_s: float = DEFAULT_OUTAGE_WINDOW_S
    security: KafkaSecurity = KafkaSecurity()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        outage_window(self.outage_window_s, 0)  # raises for a negative window

    @classmethod
    def from_settings(cls, settings: ServiceSettings, client_id: str) -> KafkaBusConfig:
        """A service's bus: its topic (and `<topic>.dlq` for dead letters), limits and security from its
        settings. Raises SettingsError for an inconsistent security configuration."""
        return cls(settings.kafka_bootstrap, client_id, topic=settings.kafka_topic,
                   dead_letter_topic=f"{settings.kafka_topic}.dlq",
                   max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
                   outage_window_s=settings.outage_window_seconds,
                   security=KafkaSecurity.from_settings(settings))


class _KafkaSubscription:
    """One consumer (one thread) for one group on one topic. `handle(record)` does the work
    for a record; when it raises, the record is left uncommitted and retried after a backoff."""

    def __init__(self, bus: KafkaEventBus, group: str, topic: str, handle: Callable[[object], None],
                 stopping: threading.Event):
        self.bus, self.group, self.topic, self.handle = bus, group, topic, handle
        self.stopping = stopping
        self.thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}-{group}", daemon=True)

    def _info(self, **more) -> dict:
        return {"group": self.group, "topic": self.topic, **more}

    def _run(self) -> None:
        backoff = Backoff(self.bus.config.backoff_s)
        consumer = None
        try:
            while not self.stopping.is_set():
                pending: dict = {}  # partition -> offset of its first record not yet done
                try:
                    if consumer is None:
                        self.bus._ensure_topics()
                        consumer = self.bus._new_consumer(self.group, self.topic)
                        log.info("consumer started", extra=self._info())
                    batch = consumer.poll(timeout_ms=self.bus.config.poll_timeout_ms)
                    pending = {tp: records[0].offset for tp, records in batch.items() if records}
                    for tp, records in batch.items():
                        for record in records:
                            if self.stopping.is_set():
                                return
                            if tp not in consumer.assignment():
                                log.info("partition revoked mid-batch; its new owner resumes from the "
                                         "last commit", extra=self._info(partition=tp.partition))
                                break
                            self.handle(record)
                            pending[tp] = record.offset + 1
                            self._commit(consumer, TopicPartition(record.topic, record.partition), record)
                        pending.pop(tp, None)
                    backoff.reset()
                except Stopping:
                    return
                except Exception as exc:  # noqa: BLE001 - survive broker/store hiccups: back off, retry
                    delay = backoff.next()
                    log.warning("event consumer error (%s); retrying in %.1fs", failure_reason(exc), delay,
                                extra=self._info(), exc_info=backoff.failures == 1)
                    consumer = self._rewind(consumer, pending, exc)
                    self.stopping.wait(delay)
        finally:
            if consumer is not None:
                try:
                    consumer.close(autocommit=False, timeout_ms=self.bus.config.close_timeout_ms)
                except Exception:  # noqa: BLE001
                    log.warning("error closing the consumer", extra=self._info(), exc_info=True)
            log.info("consumer stopped", extra=self._info())

    def _commit(self, consumer, tp, record) -> None:
        epoch = record.leader_epoch if record.leader_epoch is not None else -1
        try:
            consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", epoch)},
                            timeout_ms=self.bus.config.commit_timeout_ms)
        except Exception as exc:
            # Processed and marked but not committed: the event may be delivered again after a
            # rebalance or restart, and is then skipped as a duplicate.
            raise RuntimeError(
                f"commit of offset {record.offset + 1} on {tp} failed: {failure_reason(exc)}") from exc

    def _rewind(self, consumer, pending: dict, exc: Exception):
        """Puts each partition back on its first record not done, so nothing fetched is lost;
        a consumer that is no longer usable is closed and made again on the next round."""
        if consumer is None:
            return None
        if isinstance(exc, IllegalStateError):
            try:
                consumer.close(autocommit=False, timeout_ms=self.bus.config.close_timeout_ms)
            except Exception:  # noqa: BLE001
                pass
            return None
        assigned = consumer.assignment()
        for tp, offset in pending.items():
            if tp in assigned:
                try:
                    consumer.seek(tp, offset)
                except Exception:  # noqa: BLE001 - revoked meanwhile: the new owner resumes from the commit
                    log.debug("could not rewind", extra=self._info(partition=tp.partition), exc_info=True)
        return consumer


class KafkaEventBus(EventBus):
    """Distributed mode. Nothing here touches the network until first used: an unreachable
    broker shows in `ping()` (readiness) and in `publish()` raising Unavailable, and the
    consumer threads keep retrying with backoff until it is back."""

    def __init__(self, config: KafkaBusConfig, processed: ProcessedEvents | None = None):
        self.config = config
        self.processed = processed if processed is not None else InMemoryProcessedEvents()
        # What the EventBus interface shows (the contract tests read them).
        self.topic, self.dead_letter_topic = config.topic, config.dead_letter_topic
        self.max_attempts = config.max_attempts
        self._lock = threading.RLock()
        self._producer = None
        self._admin = None
        self._topics_ready = False
        self._subscriptions: dict[tuple[str, str], _KafkaSubscription] = {}
        self._closing = False  # no new subscriptions; consumers stopping
        self._closed = False  # producer gone: no more publishing

    # clients, made on first use
    def _bootstrap_timeout_ms(self) -> int:
        return max(1000, min(int(self.config.publish_timeout_s * 1000), 10_000))

    def _check_reachable(self) -> None:
        """Raises Unavailable unless some bootstrap server accepts a TCP connection. Checked
        before making a client because kafka-python 3.0.12 leaks the IO thread of a consumer or
        admin client whose constructor fails to bootstrap: retrying against a broker that is
        down would otherwise leave a thread behind at every attempt."""
        problems = []
        for server in self.config.bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                with socket.create_connection((host.strip("[]") or "localhost", int(port or 9092)),
                                              timeout=min(2.0, self._bootstrap_timeout_ms() / 1000)):
                    return
            except (OSError, ValueError) as exc:
                problems.append(f"{server.strip()}: {exc}")
        raise Unavailable(f"cannot reach Kafka at {self.config.bootstrap} ({'; '.join(problems)})")

    def _get_producer(self):
        config = self.config
        with self._lock:
            if self._closed:
                raise Unavailable("the Kafka event bus is closed")
            if self._producer is None:
                timeout_ms = int(config.publish_timeout_s * 1000)
                self._check_reachable()
                try:
                    self._producer = KafkaProducer(
                        bootstrap_servers=config.bootstrap, client_id=f"{config.client_id}-producer",
                        acks="all", enable_idempotence=True, retries=2**31 - 1, linger_ms=0,
                        request_timeout_ms=min(config.request_timeout_ms, timeout_ms),
                        delivery_timeout_ms=timeout_ms, max_block_ms=timeout_ms,
                        bootstrap_timeout_ms=self._bootstrap_timeout_ms(), **config.security.client_options())
                except Exception as exc:
                    raise Unavailable(f"cannot reach Kafka at {config.bootstrap}: {failure_reason(exc)}") from exc
            return self._producer

    def _get_admin(self):
        with self._lock:
            if self._admin is None:
                self._check_reachable()
                self._admin = KafkaAdminClient(
                    bootstrap_servers=self.config.bootstrap, client_id=f"{self.config.client_id}-admin",
                    request_timeout_ms=self.config.request_timeout_ms,
                    bootstrap_timeout_ms=self._bootstrap_timeout_ms(), **self.config.security.client_options())
            return self._admin

    def _drop_admin(self) -> None:
        with self._lock:
            admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001
                pass

    def _ensure_topics(self) -> None:
        """Creates the event and dead-letter topics when missing (once per bus)."""
        config = self.config
        with self._lock:
            if self._topics_ready:
                return
            try:
                admin = self._get_admin()
                spec = {"num_partitions": config.partitions, "replication_factor": config.replication_factor}
                wanted = {name: dict(spec) for name in (self.topic, self.dead_letter_topic)}
                result = admin.create_topics(wanted, timeout_ms=config.request_timeout_ms, raise_errors=False)
                created = []
                for topic in result.get("topics", []):
                    code = topic.get("error_code", 0)
                    error = for_code(code)
                    if code == 0:
                        created.append(topic["name"])
                    elif issubclass(error, AuthorizationError):
                        # A managed cluster where topics are provisioned by its operators.
                        log.warning("not allowed to create topic %s; assuming it is provisioned",
                                    topic["name"])
                    elif error is not TopicAlreadyExistsError:
                        problem = topic.get("error_message") or error.__name__
                        raise error(f"creating topic {topic['name']!r}: {problem}")
                if created:
                    admin.wait_for_topics(created, timeout_ms=max(config.request_timeout_ms, 10_000))
                    log.info("created topics", extra={"topics": created, "partitions": config.partitions,
                                                      "replication_factor": config.replication_factor})
            except Exception:
                self._drop_admin()
                raise
            self._topics_ready = True

    def _new_consumer(self, group: str, topic: str):
        config = self.config
        self._check_reachable()
        consumer = KafkaConsumer(
            bootstrap_servers=config.bootstrap, client_id=f"{config.client_id}-{group}", group_id=group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=config.session_timeout_ms, heartbeat_interval_ms=config.heartbeat_interval_ms,
            max_poll_interval_ms=config.max_poll_interval_ms, max_poll_records=config.max_poll_records,
            bootstrap_timeout_ms=self._bootstrap_timeout_ms(), **config.security.client_options())
        # Load the topic's partitions before joining. Otherwise the first assignment can be made
        # without them and a metadata-triggered second rebalance follows, which kafka-python
        # 3.0.12 may never complete when poll() times out during it: the leader's snapshot makes
        # need_rejoin() false mid-join, the SyncGroup result is never applied, the consumer keeps
        # no partitions and spins. Loading first also saves a rebalance at every start.
        try:
            if not consumer.partitions_for_topic(topic):
                log.warning("no partition metadata for the topic yet; subscribing anyway",
                            extra={"group": group, "topic": topic})
            consumer.subscribe([topic], listener=_RebalanceLog(group))
        except Exception:
            consumer.close(autocommit=False, timeout_ms=config.close_timeout_ms)
            raise
        return consumer

    # publishing
    def _send(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> None:
        producer = self._get_producer()
        try:
            self._ensure_topics()
            future = producer.send(topic, key=key, value=value, headers=headers)
            future.get(timeout=self.config.publish_timeout_s + 1)
        except Unavailable:
            raise
        except Exception as exc:
            self._discard_producer(producer)
            raise Unavailable(f"Kafka at {self.config.bootstrap} did not acknowledge the message on {topic!r}: "
                              f"{failure_reason(exc)}") from exc

    def _discard_producer(self, producer) -> None:
        """A send that failed drops its producer; the next send makes a new one. kafka-python's producer can
        stay stuck after a broker restart (every send timing out on metadata while the broker answers other
        clients: seen in the Kafka-restart fault test on a loaded machine), and a new client recovers at
        once. Callers retry a failed send anyway, and consumers drop duplicates."""
        with self._lock:
            if self._producer is not producer:
                return  # another sender already replaced it
            self._producer = None
        try:
            producer.close(timeout=0)
        except Exception:  # noqa: BLE001 - a broken client may fail to close; it is dropped either way
            log.debug("closing a failed producer raised", exc_info=True)

    def publish(self, event: events_pb2.Event) -> None:
        check_publishable(event)
        self._send(self.topic, event.job_id.encode("utf-8"), event.SerializeToString())

    def publish_raw(self, key: bytes | None, value: bytes) -> None:
        self._send(self.topic, key, value)

    # consuming
    def _start(self, group: str, topic: str, handle: Callable[[object], None],
               stopping: threading.Event) -> None:
        with self._lock:
            if self._closing:
                raise Unavailable("the Kafka event bus is closed")
            if (topic, group) in self._subscriptions:
                raise ValueError(f"group {group!r} already subscribed to {topic!r} on this bus")
            subscription = _KafkaSubscription(self, group, topic, handle, stopping)
            self._subscriptions[(topic, group)] = subscription
        subscription.thread.start()

    def subscribe(self, group: str, handler: Handler, kinds: Iterable[str] | None = None, *,
                  outage_window_s: float | None = None) -> None:
        stopping = threading.Event()
        delivery = Delivery(group, handler, check_kinds(kinds), self.processed, self.max_attempts,
                            self.config.backoff_s, stopping,
                            outage_window(outage_window_s, self.config.outage_window_s))

        def handle(record) -> None:
            result = delivery.process(record.value, {"topic": record.topic, "partition": record.partition,
                                                     "offset": record.offset})
            if result.outcome is Outcome.DEAD:
                letter = DeadLetter(record.value or b"", record.key, result.reason, group, result.attempts,
                                    record.topic, record.partition, record.offset)
                self._send(self.dead_letter_topic, record.key, letter.value, letter.headers())
                log.warning("message sent to the dead-letter topic", extra={
                    "group": group, "topic": record.topic, "partition": record.partition,
                    "offset": record.offset, "dead_letter_topic": self.dead_letter_topic,
                    "reason": result.reason})
                delivery.settle_dead(result)

        self._start(group, self.topic, handle, stopping)

    def subscribe_dead_letters(self, group: str, handler: DeadLetterHandler) -> None:
        def handle(record) -> None:
            try:
                handler(DeadLetter.from_record(record.value, record.key, record.headers))
            except Exception:  # noqa: BLE001 - nothing sensible to retry on a dead letter
                log.exception("dead-letter handler failed; skipping the letter",
                              extra={"group": group, "partition": record.partition, "offset": record.offset})

        self._start(group, self.dead_letter_topic, handle, threading.Event())

    def check_consumers(self) -> None:
        with self._lock:
            check_consumers_alive(self._subscriptions, self._closing)

    def ping(self) -> None:
        if self._closing:
            raise Unavailable("the Kafka event bus is closed")
        try:
            self._get_admin().describe_cluster()
        except Unavailable:
            raise
        except Exception as exc:
            self._drop_admin()
            raise Unavailable(f"cannot reach Kafka at {self.config.bootstrap}: {failure_reason(exc)}") from exc

    def close(self, timeout: float = 10.0) -> None:
        """Stops the consumers once their in-flight handler returned (each commits what it
        finished; a handler may still publish until then), then flushes and closes the producer."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closing:
                return
            self._closing = True
            subscriptions = list(self._subscriptions.values())
        for subscription in subscriptions:
            subscription.stopping.set()
        join_consumers(subscriptions, deadline)
        with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.flush(timeout=max(0.1, deadline - time.monotonic()))
                producer.close(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001
                log.warning("error flushing or closing the producer", exc_info=True)
        self._drop_admin()


class _RebalanceLog(ConsumerRebalanceListener):
    """Offsets are committed after every message, so there is nothing to commit when partitions
    are revoked; a message in flight during a rebalance is redelivered and then deduplicated."""

    def __init__(self, group: str):
        self.group = group

    def on_partitions_revoked(self, revoked) -> None:
        if revoked:
            log.info("partitions revoked", extra={"group": self.group, "partitions": _names(revoked)})

    def on_partitions_assigned(self, assigned) -> None:
        log.info("partitions assigned", extra={"group": self.group, "partitions": _names(assigned)})

    def on_partitions_lost(self, lost) -> None:
        log.warning("partitions lost (session expired); they will be redelivered to their new owner",
                    extra={"group": self.group, "partitions": _names(lost)})


def _names(partitions) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)
