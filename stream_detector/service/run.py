"""``stream-detector run``: load the model, serve health and metrics, run until SIGTERM."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException

from stream_detector.artifact import load_artifact
from stream_detector.errors import InputError
from stream_detector.kafka.admin import ensure_topics
from stream_detector.kafka.exceptions import TopicSetupError
from stream_detector.kafka.properties import producer_properties
from stream_detector.metrics import Metrics
from stream_detector.model_store import open_source
from stream_detector.models.base import set_threads
from stream_detector.server import HealthServer
from stream_detector.service.config import ServiceConfig
from stream_detector.service.loop import Detector
from stream_detector.service.reload import ModelWatcher

log = logging.getLogger(__name__)


def run_service(options: Mapping[str, Any]) -> int:
    """``stream-detector run``: load the model, serve health and metrics, run until SIGTERM."""
    cfg = ServiceConfig.from_options(options)
    set_threads(cfg.inference_threads, cfg.inference_workers)
    # a directory, or s3://bucket/prefix: a bad one is an InputError (exit 2) here
    source = open_source(cfg.model_dir, cfg.model_max_bytes)
    # the whole artifact is checked here (a bad one, or one refused before: exit 2)
    art = load_artifact(source.open())
    metrics = Metrics.create()
    try:
        topics = [t for t in (cfg.output_topic, cfg.dlq_topic) if t]
        ensure_topics(cfg.bootstrap_servers, topics, partitions=1, timeout=15,
                      client_config=producer_properties(cfg.kafka))
    except (TopicSetupError, KafkaException, ValueError) as exc:
        log.warning("could not make sure the output topics exist: %s", exc)
    # a window's score must not depend on its batch; the check also warms every shape up
    shapes = art.model.fix_batch_shapes(cfg.max_batch, cfg.explain)
    log.info("scoring at batch shapes %s (checked bit-identical to %d)",
             ", ".join(map(str, shapes)), cfg.max_batch)
    det = Detector(cfg, art, metrics)
    server = None
    if cfg.metrics_port:
        try:
            server = HealthServer(cfg.metrics_host, cfg.metrics_port, metrics.registry,
                                  det.alive, det.ready).start()
        except OSError as exc:
            raise InputError(f"--metrics-port {cfg.metrics_port}: cannot listen ({exc})") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, det.stop)
    log.info("model %s %s (window %d, hop %d); consuming %s as group %s",
             art.kind, art.version, art.window, det.hop, cfg.input_topic, cfg.group_id)
    watcher = None
    if cfg.model_poll_s > 0:
        watcher = ModelWatcher(source, cfg.model_poll_s, det)
        watcher.start()
    # TensorFlow and Keras leave ~1M long-lived objects; a full collection walking them all
    # stalls the loop for hundreds of ms. Freeze what exists now out of the collector's way.
    gc.collect()
    gc.freeze()
    try:
        return det.run()
    finally:
        if watcher is not None:
            watcher.stop()
        if server is not None:
            server.stop()
