"""A changelog that cannot be created is never silent: not ready, state_ready 0, and with
--state-required (the default) no input is consumed, so no offset commits without state.
Once it can be created, the detector resumes by itself.

The embedded broker creates any topic name, so the refusal is injected where the detector
creates the changelog (as a user without CreateTopics rights on ``<group>-state`` sees it).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kafka_helpers import produce_json
from service_helpers import T0, committed_offsets, run_config, wait_until, wave

import stream_detector.kafka.admin as admin
from stream_detector.artifact import load_artifact
from stream_detector.kafka.exceptions import TopicSetupError
from stream_detector.metrics import Metrics
from stream_detector.service import Detector
from stream_detector.testing import registry_value


def _refuse(*args: Any, **kw: Any) -> int:
    raise TopicSetupError("cannot create topic: TOPIC_AUTHORIZATION_FAILED (injected)")


def _sample(det: Detector, name: str) -> float:
    return registry_value(det.metrics.registry, name)


@pytest.mark.parametrize("required", [True, False])
def test_a_changelog_that_cannot_be_created(broker_bootstrap, topic_factory, group_id, model,
                                            monkeypatch, required):
    monkeypatch.setattr(admin, "ensure_changelog", _refuse)
    src, out = topic_factory(1), topic_factory(1)
    values = wave(60, seed=1)
    produce_json(broker_bootstrap, src, [("a", {"key": "a", "ts": T0 + 60 * i,
                                                "value": float(values[i])}) for i in range(60)])
    cfg = run_config(broker_bootstrap, src, out, group_id, model,
                     *([] if required else ["--no-state-required"]))
    assert cfg.state_required is required
    det = Detector(cfg, load_artifact(model), Metrics.create())
    loop = threading.Thread(target=det.run, daemon=True)
    loop.start()
    try:
        wait_until(lambda: det.parts.assigned, 60, "an assignment")
        if required:
            time.sleep(3.0)
            assert _sample(det, "stream_detector_messages_consumed_total") == 0
            assert committed_offsets(broker_bootstrap, group_id, src, 1)[0] == 0
        else:
            wait_until(lambda: committed_offsets(broker_bootstrap, group_id, src, 1)[0] == 60,
                       60, "consumed without state")
        assert _sample(det, "stream_detector_state_ready") == 0.0
        ok, why = det.ready()
        assert not ok and "state changelog unusable" in why, why
        assert _sample(det, "stream_detector_ready") == 0.0
        # the rights come back: the changelog is created, the partition resumes (after a
        # restore with --state-required), and everything is consumed and committed
        monkeypatch.undo()
        wait_until(lambda: _sample(det, "stream_detector_state_ready") == 1.0, 30,
                   "state ready again")
        wait_until(lambda: committed_offsets(broker_bootstrap, group_id, src, 1)[0] == 60,
                   60, "consumed to the end")
        assert _sample(det, "stream_detector_messages_consumed_total") == 60
        assert det.ready()[0], det.ready()[1]
    finally:
        det.stop()
        loop.join(30)
