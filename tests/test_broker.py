"""The embedded broker, topic provisioning and the Kafka guarantees the service relies on."""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_helpers import consume_all, consumer_conf, produce_json

from stream_detector.kafka.admin import ensure_topics
from stream_detector.kafka.embedded import EmbeddedBroker, broker_binary, free_port
from stream_detector.kafka.exceptions import BrokerBinaryNotFound, BrokerStartError


@pytest.fixture
def tansu_available() -> None:
    try:
        broker_binary()
    except BrokerBinaryNotFound as exc:
        pytest.skip(str(exc))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _poll_n(consumer: Consumer, n: int, timeout: float = 20) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            out.append(msg)
    return out


@pytest.mark.broker
def test_embedded_broker_starts_and_stops(tansu_available: None, tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    broker.start(timeout=15)
    pid = broker.pid
    assert pid is not None and broker.running
    md = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(timeout=5)
    assert md.cluster_id == broker.cluster_id
    # A connected client makes Tansu ignore SIGTERM; stop() must still be quick.
    consumer = Consumer(consumer_conf(broker.bootstrap_servers, "idle"))
    consumer.list_topics(timeout=5)
    started = time.monotonic()
    broker.stop()
    assert time.monotonic() - started < 5
    consumer.close()
    assert not broker.running
    assert not _alive(pid)  # gone and reaped, not a zombie
    broker.stop()  # idempotent
    with socket.socket() as sock:  # the port is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", broker.port))


@pytest.mark.broker
def test_context_manager_stops_broker(tansu_available: None, tmp_path: Path) -> None:
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        pid = broker.pid
        assert pid is not None and _alive(pid)
    assert not _alive(pid)


@pytest.mark.broker
def test_start_refuses_a_taken_port(tansu_available: None, tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log")
        with pytest.raises(BrokerStartError, match="in use"):
            broker.start(timeout=5)
        assert not broker.running


def test_keyed_json_roundtrip_keeps_per_key_order(
    broker_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=3)
    keys = [f"host-{i}.cpu" for i in range(12)]
    messages = [(k, {"key": k, "seq": s, "value": s * 0.5}) for s in range(10) for k in keys]
    reports = produce_json(broker_bootstrap, topic, messages)
    assert len(reports) == len(messages)

    got = consume_all(broker_bootstrap, topic, expected=len(messages), timeout=20)

    assert len(got) == len(messages)
    partitions_of: defaultdict[str, set[int]] = defaultdict(set)
    seqs: defaultdict[str, list[int]] = defaultdict(list)
    for m in got:
        assert m["key"] == m["value"]["key"]
        partitions_of[m["key"]].add(m["partition"])
        seqs[m["key"]].append(m["value"]["seq"])
    assert all(len(p) == 1 for p in partitions_of.values()), "a key spans partitions"
    assert len(set().union(*partitions_of.values())) > 1, "all keys landed in one partition"
    assert all(s == list(range(10)) for s in seqs.values()), "per-key order broken"


def test_consume_all_stops_when_idle(
    broker_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=2)
    produce_json(broker_bootstrap, topic, [("a", {"n": 1}), (None, b"not json")])
    started = time.monotonic()
    got = consume_all(broker_bootstrap, topic, expected=None, timeout=20, idle=1)
    assert time.monotonic() - started < 10
    assert sorted(str(m["value"]) for m in got) == ["b'not json'", "{'n': 1}"]


def test_ensure_topics_is_idempotent(broker_bootstrap: str) -> None:
    import uuid

    a, b = f"ens-{uuid.uuid4().hex[:12]}", f"ens-{uuid.uuid4().hex[:12]}"
    ensure_topics(broker_bootstrap, {a: 3})
    ensure_topics(broker_bootstrap, {a: 3})
    ensure_topics(broker_bootstrap, [a, b], partitions=2)  # a exists with 3: left as is
    md = AdminClient({"bootstrap.servers": broker_bootstrap}).list_topics(timeout=5)
    assert len(md.topics[a].partitions) == 3
    assert len(md.topics[b].partitions) == 2


def test_ensure_topics_validates_arguments(broker_bootstrap: str) -> None:
    with pytest.raises(ValueError, match="partitions"):
        ensure_topics(broker_bootstrap, {"zero-partitions": 0})
    with pytest.raises(ValueError, match="empty"):
        ensure_topics(broker_bootstrap, [""])
    ensure_topics(broker_bootstrap, [])  # nothing to do


def test_committed_offsets_resume_after_restart(
    broker_bootstrap: str, topic_factory: Callable[..., str], group_id: str
) -> None:
    topic = topic_factory(partitions=2)
    produce_json(broker_bootstrap, topic, [(f"k{i % 4}", {"i": i}) for i in range(20)])
    conf = consumer_conf(broker_bootstrap, group_id, {"enable.auto.offset.store": False})

    first = Consumer(conf)
    first.subscribe([topic])
    batch = _poll_n(first, 8)
    assert len(batch) == 8
    for msg in batch:
        first.store_offsets(msg)
    first.commit(asynchronous=False)
    committed = first.committed([TopicPartition(topic, p) for p in range(2)], timeout=10)
    first.close()
    next_offset: dict[int, int] = {}
    for msg in batch:
        part, off = msg.partition(), msg.offset()
        assert part is not None and off is not None
        next_offset[part] = max(next_offset.get(part, 0), off + 1)
    assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == next_offset

    second = Consumer(conf)
    second.subscribe([topic])
    rest = _poll_n(second, 12)
    extra = _poll_n(second, 1, timeout=1)
    second.close()

    seen = {(m.partition(), m.offset()) for m in batch}
    again = {(m.partition(), m.offset()) for m in rest}
    assert not extra
    assert not seen & again, "committed messages were delivered again"
    assert len(seen | again) == 20


@pytest.mark.broker
def test_the_broker_command_stops_its_broker_on_sigterm(tansu_available: None) -> None:
    """`stream-detector broker` under docker stop or kill: no orphaned Tansu left behind."""
    import signal
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stream_detector", "broker", "--port",
                             str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert "broker listening" in (proc.stdout.readline() if proc.stdout else "")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "the broker runs as a child process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        deadline = time.monotonic() + 5
        while any(_alive(int(c)) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(int(c)) for c in children), "Tansu stopped with the command"
    finally:
        proc.kill()
        proc.wait()
