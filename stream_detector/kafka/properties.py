"""librdkafka properties: what the detector's clients are built with, and what a user may
override with ``--kafka``.

Offsets follow delivery, so the properties that guarantee it are set here and a
``--kafka`` override of one is refused (:func:`refuse_delivery_overrides`).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from stream_detector.errors import ConfigError

# librdkafka properties that offsets-follow-delivery depends on: a --kafka override of one
# would commit input whose events or dead letters were never confirmed, or lose them
# (aliases included: librdkafka takes either name)
DELIVERY_CRITICAL = (
    "enable.auto.commit", "auto.commit.enable", "enable.auto.offset.store",
    "acks", "request.required.acks", "enable.idempotence", "transactional.id",
    "group.id",
)

_CONSUMER_ONLY = (
    "session.timeout.ms", "max.poll.interval.ms", "auto.offset.reset", "group.instance.id",
    "partition.assignment.strategy", "heartbeat.interval.ms", "fetch.min.bytes",
    "fetch.wait.max.ms", "fetch.max.bytes", "max.partition.fetch.bytes", "group.protocol",
    "isolation.level", "enable.auto.commit", "auto.commit.interval.ms", "queued.min.messages",
)


def refuse_delivery_overrides(kafka: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` naming the ``--kafka`` properties that the detector sets
    itself because delivery depends on them."""
    bad = sorted(k for k in kafka if k.strip().lower() in DELIVERY_CRITICAL)
    if bad:
        raise ConfigError(
            f"--kafka {', '.join(bad)}: set by the detector because offsets follow delivery "
            "(use --group-id for the group); remove the override")


def producer_properties(kafka: Mapping[str, str]) -> dict[str, str]:
    """The user's ``--kafka`` properties minus consumer-only ones (which producers warn about)."""
    return {k: v for k, v in kafka.items() if k not in _CONSUMER_ONLY}


def common_properties(bootstrap_servers: str) -> dict[str, Any]:
    """What every client of the detector shares: the cluster and a client id per host."""
    return {"bootstrap.servers": bootstrap_servers,
            "client.id": f"stream-detector-{socket.gethostname()}"}


def consumer_properties(bootstrap_servers: str, group_id: str, kafka: Mapping[str, str],
                        **callbacks: Any) -> dict[str, Any]:
    """The detector's consumer: manual commits of stored offsets only (offsets follow
    delivery), cooperative rebalances, statistics for the lag metric; then ``--kafka``."""
    return {
        **common_properties(bootstrap_servers),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "statistics.interval.ms": 2000,
        # with fetch.min.bytes 1 a broker answers a fetch as soon as data is there, so
        # this only bounds how often an idle partition is asked again (librdkafka's
        # default is 500); a longer wait costs the broker fewer cores per idle partition
        "fetch.wait.max.ms": 100,
        **callbacks,
        **kafka,
    }


def event_producer_properties(bootstrap_servers: str, kafka: Mapping[str, str],
                              **callbacks: Any) -> dict[str, Any]:
    """The detector's producer (events, dead letters, state): idempotent, every replica's
    acknowledgement; then ``--kafka`` minus consumer-only properties."""
    return {
        **common_properties(bootstrap_servers), "enable.idempotence": True, "acks": "all",
        "linger.ms": 5, **callbacks, **producer_properties(kafka),
    }
