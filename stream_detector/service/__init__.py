"""The running detector, by job: the loop and data path (``loop``), scoring (``inference``),
checkpoints (``checkpoint``: the steps in order; ``checkpointing``: marks, state, commits),
rebalances (``rebalance``), model reload (``reload``) and a new version's shadow before its
promotion (``shadow``), its config (``config``) and the
``run`` command (``run``)."""
from __future__ import annotations

from stream_detector.service.config import ServiceConfig
from stream_detector.service.loop import Detector
from stream_detector.service.reload import ModelWatcher
from stream_detector.service.run import run_service

__all__ = ["Detector", "ModelWatcher", "ServiceConfig", "run_service"]
