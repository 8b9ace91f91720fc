"""Topic provisioning through the Kafka admin API (plain Kafka: any broker).

`ensure_topics` creates the topics the service writes to; `ensure_changelog` creates or
grows the compacted state changelog.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException

# NewTopic is documented under confluent_kafka.admin but not re-exported for type checkers.
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic  # type: ignore[attr-defined]

from stream_detector.kafka.exceptions import TopicSetupError

__all__ = ["ensure_changelog", "ensure_topics"]

log = logging.getLogger(__name__)


def ensure_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int] | Sequence[str],
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 30,
    *,
    replication_factor: int = -1,
    client_config: Mapping[str, Any] | None = None,
) -> None:
    """Create topics that do not exist yet and wait until the metadata shows them.

    Existing topics are left as they are (partitions and config are not changed); a
    partition count different from the requested one is logged as a warning.

    Parameters
    ----------
    bootstrap_servers
        Kafka ``bootstrap.servers``.
    topics
        Topic names, or a mapping of topic name to partition count.
    partitions
        Partition count for names given without one.
    config
        Topic configs for new topics, e.g. ``{"cleanup.policy": "compact"}``.
    timeout
        Seconds for the whole operation.
    replication_factor
        ``-1`` uses the broker's ``default.replication.factor`` (Kafka >= 2.4).
    client_config
        Extra librdkafka properties for the admin client (SASL, SSL, ...).

    Raises
    ------
    ValueError
        If a name is empty or a partition count is below 1.
    TopicSetupError
        If the broker refuses a topic or it does not show up within ``timeout``.
    """
    wanted: dict[str, int] = (
        dict(topics) if isinstance(topics, Mapping) else dict.fromkeys(topics, partitions)
    )
    for name, count in wanted.items():
        if not name:
            raise ValueError("topic name must not be empty")
        if count < 1:
            raise ValueError(f"topic {name!r}: partitions must be >= 1, got {count}")
    if not wanted:
        return

    deadline = time.monotonic() + timeout
    admin = AdminClient({**(client_config or {}), "bootstrap.servers": bootstrap_servers})
    new = [
        NewTopic(name, count, replication_factor, config=dict(config or {}))
        for name, count in wanted.items()
    ]
    futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
    existed: set[str] = set()
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                existed.add(name)
                continue
            raise TopicSetupError(f"cannot create topic {name!r}: {exc}") from exc
        except Exception as exc:  # concurrent.futures.TimeoutError and the like
            raise TopicSetupError(f"cannot create topic {name!r}: {exc!r}") from exc

    # Creation is asynchronous in Kafka: wait until every partition has a leader.
    warned: set[str] = set()
    pending = dict(wanted)
    while True:
        try:
            md = admin.list_topics(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
        except KafkaException:
            md = None
        if md is not None:
            for name in list(pending):
                tm = md.topics.get(name)
                if tm is None or tm.error is not None or not tm.partitions:
                    continue
                if any(p.leader < 0 or p.error is not None for p in tm.partitions.values()):
                    continue
                count = len(tm.partitions)
                if count != pending[name]:
                    if name not in existed:
                        continue  # still being created
                    if name not in warned:
                        warned.add(name)
                        log.warning(
                            "topic %r exists with %d partitions, not %d; left unchanged",
                            name, count, pending[name],
                        )  # fmt: skip
                del pending[name]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TopicSetupError(
                f"topics not ready after {timeout:.0f} s: {', '.join(sorted(pending))}"
            )
        time.sleep(0.1)


def ensure_changelog(bootstrap: str, topic: str, partitions: int,
                     client_config: Mapping[str, Any] | None = None, timeout: float = 30,
                     like: str | None = None) -> int:
    """Create the compacted changelog with at least ``partitions`` partitions (and at least
    as many as topic ``like`` has), or grow it to that many.

    Returns the partition count it has afterwards.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})
    if like is not None:
        md = admin.list_topics(like, timeout=timeout).topics.get(like)
        if md is not None and md.error is None:
            partitions = max(partitions, len(md.partitions))
    ensure_topics(bootstrap, {topic: partitions}, config={"cleanup.policy": "compact"},
                  timeout=timeout, client_config=client_config)
    have = len(admin.list_topics(topic, timeout=timeout).topics[topic].partitions)
    if have < partitions:
        fut = admin.create_partitions([NewPartitions(topic, partitions)])[topic]
        try:
            fut.result(timeout)
        except Exception as exc:  # KafkaException, or a broker without CreatePartitions
            log.error("state topic %s has %d partitions, %d needed, and could not grow (%s): "
                      "series of partitions >= %d are not checkpointed", topic, have,
                      partitions, exc, have)
            return have
        deadline = time.monotonic() + timeout
        while have < partitions and time.monotonic() < deadline:
            time.sleep(0.2)
            have = len(admin.list_topics(topic, timeout=timeout).topics[topic].partitions)
    return have
