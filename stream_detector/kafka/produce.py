"""Produce with backpressure: the one place that waits out a full local queue.

librdkafka raises :class:`BufferError` when its local queue is full; serving delivery
reports (``poll``) makes room. Every producer of the package (events, dead letters, state,
replay) and the scripts go through :func:`produce`.
"""

from __future__ import annotations

from typing import Any, Protocol


class _Producer(Protocol):
    def produce(self, *args: Any, **kwargs: Any) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...


def produce(producer: _Producer, topic: str, *, wait_s: float = 0.05, **kwargs: Any) -> None:
    """``producer.produce(topic, **kwargs)``, serving delivery reports for up to ``wait_s``
    at a time while the local queue is full. Other errors (``KafkaException``) propagate:
    the record was refused outright and no delivery report will come."""
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(wait_s)
