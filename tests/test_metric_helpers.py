"""The helpers tests read metrics with (``stream_detector.testing``): a metric that is not
exposed is an error, never 0, so a renamed metric cannot pass a ``== 0`` check (#26 item 9)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from stream_detector.server import HealthServer
from stream_detector.testing import (
    DetectorProcess,
    MetricMissing,
    MetricsUnreachable,
    registry_value,
    split_sample_key,
    wait_until,
)


def _registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("stream_detector_things", "Things.", registry=reg).inc(3)
    Counter("stream_detector_drops", "Drops by reason.", ["reason"], registry=reg) \
        .labels(reason="full").inc()
    Gauge("stream_detector_level", "A level.", registry=reg).set(0)
    return reg


def test_registry_value_reads_what_is_exposed_and_refuses_what_is_not() -> None:
    reg = _registry()
    assert registry_value(reg, "stream_detector_things_total") == 3
    assert registry_value(reg, "stream_detector_level") == 0
    assert registry_value(reg, "stream_detector_drops_total", {"reason": "full"}) == 1
    # a renamed metric: an error, with or without absent_ok
    for absent_ok in (False, True):
        with pytest.raises(MetricMissing, match="no metric family"):
            registry_value(reg, "stream_detector_thing_total", absent_ok=absent_ok)
        with pytest.raises(MetricMissing, match="no metric family"):
            registry_value(reg, "stream_detector_drop_total", {"reason": "old"},
                           absent_ok=absent_ok)
    # a labelled series not touched yet: an error unless the caller allows it
    with pytest.raises(MetricMissing, match="absent_ok"):
        registry_value(reg, "stream_detector_drops_total", {"reason": "old"})
    assert registry_value(reg, "stream_detector_drops_total", {"reason": "old"},
                          absent_ok=True) == 0


def test_split_sample_key() -> None:
    assert split_sample_key("a_total") == ("a_total", {})
    assert split_sample_key('a_total{x="1",y="b c"}') == ("a_total", {"x": "1", "y": "b c"})


def test_detector_process_value_over_http() -> None:
    """DetectorProcess.value on a real /metrics endpoint (no detector process needed)."""
    server = HealthServer("127.0.0.1", 0, _registry(), lambda: (True, ""),
                          lambda: (True, "")).start()
    det = object.__new__(DetectorProcess)
    det.port = server.port
    try:
        assert det.value("stream_detector_things_total") == 3
        assert det.value('stream_detector_drops_total{reason="full"}') == 1
        with pytest.raises(MetricMissing, match="no metric family"):
            det.value("stream_detector_renamed_total")
        with pytest.raises(MetricMissing, match="no metric family"):
            det.value("stream_detector_renamed_total", absent_ok=True)
        with pytest.raises(MetricMissing, match="absent_ok"):
            det.value('stream_detector_drops_total{reason="old"}')
        assert det.value('stream_detector_drops_total{reason="old"}', absent_ok=True) == 0
        # a missing metric ends a wait at once instead of reading 0 until the timeout
        with pytest.raises(MetricMissing):
            wait_until(lambda: det.value("stream_detector_renamed_total") == 0, 5, "x")
    finally:
        server.stop()
    # nothing listening: unreachable, which wait_until waits through until its timeout
    with pytest.raises(MetricsUnreachable):
        det.value("stream_detector_things_total")
    with pytest.raises(AssertionError, match="timed out waiting for things.*last: GET"):
        wait_until(lambda: det.value("stream_detector_things_total") > 0, 0.5, "things")
