"""Models from S3: the store against a local S3 server (moto's server mode), and a real
``run --model s3://...`` that hot-reloads a published version and refuses a corrupted one.

The server runs in this process (``ThreadedMotoServer``); the detector subprocess reaches
it through boto3's standard environment (``AWS_ENDPOINT_URL``, access keys), set here for
the whole module.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_detector.errors import ArtifactError, InputError, ModelStoreError
from stream_detector.kafka.embedded import free_port
from stream_detector.model_store import DirSource, S3Source, open_source, parse_s3_url
from stream_detector.testing import registry_value

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free port, with boto3's environment pointing at it."""
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            mp.delenv(k, raising=False)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def fake_artifact(path: Path, seed: int) -> Path:
    """An artifact directory that passes every check before Keras (metadata and sha256):
    enough for the store, which never loads the model."""
    path.mkdir(parents=True)
    blob = hashlib.sha512(str(seed).encode()).digest() * 64
    (path / "model.keras").write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    meta = {
        "schema_version": 1, "model": "conv1d", "version": f"2026010{seed}T000000Z-{digest[:8]}",
        "window": 4, "hop": 1, "n_features": 1, "features": ["value"],
        "scaler": {"method": "robust", "global": {"center": [0.0], "scale": [1.0]},
                   "per_key": {}},
        "threshold": {"global": 1.0, "per_key": {}},
        "model_sha256": digest, "created_at": "2026-01-01T00:00:00+00:00",
    }
    (path / "metadata.json").write_text(json.dumps(meta))
    return path


def put(bucket: str, key: str, data: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)


# --- locations -------------------------------------------------------------------------------


def test_locations_are_parsed_or_refused_with_a_reason(tmp_path):
    assert parse_s3_url("s3://my-models/prod/") == ("my-models", "prod")
    assert parse_s3_url("s3://my-models/a/b") == ("my-models", "a/b")
    assert isinstance(open_source(str(tmp_path)), DirSource)
    assert isinstance(open_source("s3://my-models/prod"), S3Source)
    for bad, why in (("gs://b/p", "only s3://"), ("s3://my-models", "give a prefix"),
                     ("s3://My_Bucket/p", "not an S3 bucket name")):
        with pytest.raises(InputError, match=why):
            open_source(bad)


# --- the store against the S3 server ---------------------------------------------------------


def test_publish_then_open_and_poll_new_versions(bucket, tmp_path):
    v1 = fake_artifact(tmp_path / "v1", 1)
    v2 = fake_artifact(tmp_path / "v2", 2)
    store = S3Source(bucket, "prod", cache_dir=tmp_path / "cache")
    name1 = store.publish(v1)
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"prod/LATEST", f"prod/{name1}/metadata.json", f"prod/{name1}/model.keras"}

    reader = S3Source(bucket, "prod/", cache_dir=tmp_path / "reader")
    local = reader.open()
    assert local.name == name1
    assert (local / "model.keras").read_bytes() == (v1 / "model.keras").read_bytes()
    assert reader.poll() is None  # nothing new

    name2 = store.publish(v2)
    local2 = reader.poll()
    assert local2 is not None and local2.name == name2
    assert (local2 / "metadata.json").read_text() == (v2 / "metadata.json").read_text()
    assert reader.poll() is None
    cache = tmp_path / "reader"
    assert {p.name for p in cache.iterdir()} == {name1, name2}
    # a third version: the cache keeps the one served before and the newest only
    name3 = store.publish(fake_artifact(tmp_path / "v3", 3))
    local3 = reader.poll()
    assert local3 is not None and local3.name == name3
    assert {p.name for p in cache.iterdir()} == {name2, name3}
    # a rollback is LATEST pointing at the old version again
    put(bucket, "prod/LATEST", f"{name1}\n".encode())
    rolled = reader.poll()
    assert rolled is not None and rolled.name == name1
    assert {p.name for p in cache.iterdir()} == {name3, name1}


def test_a_corrupted_version_is_refused_once_and_not_retried(bucket, tmp_path):
    store = S3Source(bucket, "m", cache_dir=tmp_path / "cache")
    store.publish(fake_artifact(tmp_path / "v1", 1))
    store.open()
    good = fake_artifact(tmp_path / "v2", 2)
    put(bucket, "m/bad/metadata.json", (good / "metadata.json").read_bytes())
    put(bucket, "m/bad/model.keras", (good / "model.keras").read_bytes()[:-10] + b"x" * 10)
    put(bucket, "m/LATEST", b"bad\n")
    with pytest.raises(ArtifactError, match=r"s3://.*/m/bad/model.keras: sha256 .* does not "
                                            r"match metadata.json"):
        store.poll()
    assert store.poll() is None  # the same refused version: not downloaded again
    assert not (tmp_path / "cache" / "bad").exists(), "a refused version is not cached"
    # repaired in place: tried again once LATEST is written again (Last-Modified: seconds)
    put(bucket, "m/bad/model.keras", (good / "model.keras").read_bytes())
    time.sleep(1.1)
    put(bucket, "m/LATEST", b"bad\n")
    fixed = store.poll()
    assert fixed is not None and fixed.name == "bad"
    # damaged metadata: refused, named by its URL
    put(bucket, "m/worse/metadata.json", b"{not json")
    put(bucket, "m/worse/model.keras", b"x")
    put(bucket, "m/LATEST", b"worse")
    with pytest.raises(ArtifactError, match=r"s3://.*/m/worse/metadata.json: not valid JSON"):
        store.poll()


def test_a_missing_version_is_refused_then_picked_up_once_uploaded(bucket, tmp_path):
    """LATEST written before its files (the wrong order): refused once, and fetched at a
    later poll once the files are there."""
    store = S3Source(bucket, "m", cache_dir=tmp_path / "cache")
    store.publish(fake_artifact(tmp_path / "v1", 1))
    store.open()
    put(bucket, "m/LATEST", b"early")
    with pytest.raises(ArtifactError, match=r"m/early/metadata.json: download failed"):
        store.poll()
    assert store.poll() is None  # said once
    v2 = fake_artifact(tmp_path / "v2", 2)
    for name in ("model.keras", "metadata.json"):
        put(bucket, f"m/early/{name}", (v2 / name).read_bytes())
    got = store.poll()
    assert got is not None and got.name == "early"


def test_a_version_or_pointer_over_the_size_limit_is_refused(bucket, tmp_path):
    v1 = fake_artifact(tmp_path / "v1", 1)
    size = sum((v1 / n).stat().st_size for n in ("model.keras", "metadata.json"))
    store = S3Source(bucket, "m", cache_dir=tmp_path / "cache", max_bytes=size - 1)
    name = store.publish(v1)
    with pytest.raises(ArtifactError, match=r"m/.*/model.keras: \d+ bytes, over the \d+ "
                                            r"bytes a version may take \(--model-max-bytes\)"):
        store.open()
    assert not any((tmp_path / "cache").iterdir()), "nothing of it stays"
    assert S3Source(bucket, "m", cache_dir=tmp_path / "c2", max_bytes=size).open().name == name
    put(bucket, "m/LATEST", b"v" * 5000)
    with pytest.raises(ModelStoreError, match=r"m/LATEST: 5000 bytes, not a version name"):
        store.latest()


class _Detector:
    """What ModelWatcher asks of the detector, serving ``version``."""

    def __init__(self, version: str) -> None:
        from collections import deque
        from types import SimpleNamespace

        from stream_detector.metrics import Metrics

        self.art = SimpleNamespace(version=version)
        self.metrics = Metrics.create()
        self.cfg = SimpleNamespace(max_batch=8, hop=None)
        self.refusals: deque = deque()
        self.offered: list = []

    def current_model(self):
        return self.art

    def offer_model(self, art) -> None:
        self.offered.append(art)

    def refused(self) -> float:
        return registry_value(self.metrics.registry, "stream_detector_model_reloads_total",
                              {"result": "refused"})


def test_a_version_refused_after_download_is_retried_and_the_serving_one_kept(bucket, tmp_path):
    """The fake artifacts pass the store's checks but not Keras: refused by the watcher
    after download. Tried again when LATEST is written again; the serving version's files
    stay in the cache through the refusal and the next version."""
    from stream_detector.service.reload import ModelWatcher

    store = S3Source(bucket, "m", cache_dir=tmp_path / "publisher")
    name1 = store.publish(fake_artifact(tmp_path / "v1", 1))
    reader = S3Source(bucket, "m", cache_dir=tmp_path / "cache")
    assert reader.open().name == name1
    det = _Detector(name1)
    watcher = ModelWatcher(reader, 1.0, det)  # type: ignore[arg-type]
    name2 = store.publish(fake_artifact(tmp_path / "v2", 2))
    watcher.check()
    assert det.refused() == 1 and not det.offered
    assert not (tmp_path / "cache" / name2).exists()
    watcher.check()
    assert det.refused() == 1, "refused once per publication, not at every poll"
    time.sleep(1.1)  # Last-Modified has seconds
    put(bucket, "m/LATEST", f"{name2}\n".encode())
    watcher.check()
    assert det.refused() == 2, "LATEST written again: tried again"
    name3 = store.publish(fake_artifact(tmp_path / "v3", 3))
    got = reader.poll({name1})
    assert got is not None and got.name == name3
    assert (tmp_path / "cache" / name1 / "model.keras").is_file(), "the serving version stays"


def test_a_refusal_is_kept_in_the_store_and_a_restart_serves_what_kept_serving(
        bucket, tmp_path):
    store = S3Source(bucket, "m", cache_dir=tmp_path / "publisher")
    v2 = fake_artifact(tmp_path / "v2", 2)
    name1 = store.publish(fake_artifact(tmp_path / "v1", 1))
    reader = S3Source(bucket, "m", cache_dir=tmp_path / "cache")
    reader.open()
    name2 = store.publish(v2)
    assert reader.poll() is not None  # into the shadow; the gate refuses it:
    sha = json.loads((v2 / "metadata.json").read_text())["model_sha256"]
    reader.persist_refusal(name2, sha, "candidate F1 0.2 vs serving 0.9", name1)
    doc = json.loads(boto3.client("s3").get_object(
        Bucket=bucket, Key=f"m/{name2}/REFUSED")["Body"].read())
    assert doc["version"] == name2 and doc["serving"] == name1
    restarted = S3Source(bucket, "m", cache_dir=tmp_path / "restart")
    assert restarted.open().name == name1, "what served when it was refused"
    assert restarted.poll() is None, "and it is not tried again"
    time.sleep(1.1)
    put(bucket, "m/LATEST", f"{name2}\n".encode())
    with pytest.raises(ArtifactError, match=r"refused by the promotion gate .*F1 0.2"):
        restarted.poll()
    time.sleep(1.1)
    store.publish(v2)  # published again: the marker goes, it is tried again
    again = restarted.poll()
    assert again is not None and again.name == name2
    # nothing to fall back to: a start-up refuses with the reason
    put(bucket, "m/LATEST", f"{name2}\n".encode())
    put(bucket, f"m/{name2}/REFUSED", b"{}")
    with pytest.raises(InputError, match="no version to fall back to"):
        S3Source(bucket, "m", cache_dir=tmp_path / "r2").open()


def test_unreadable_store_or_pointer_is_a_store_error(bucket, tmp_path, monkeypatch):
    with pytest.raises(ModelStoreError, match=r"s3://.*/nothing/LATEST: cannot be read"):
        S3Source(bucket, "nothing", cache_dir=tmp_path / "c1").open()
    put(bucket, "p/LATEST", b"../../etc\n")
    with pytest.raises(ModelStoreError, match="is not a version name"):
        S3Source(bucket, "p", cache_dir=tmp_path / "c2").open()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ModelStoreError, match="cannot be read"):
        S3Source(bucket, "p", cache_dir=tmp_path / "c3").open()


def test_run_with_a_bad_url_exits_2_with_one_line(bucket, tmp_path):
    import subprocess

    env = {**os.environ, "AWS_MAX_ATTEMPTS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "stream_detector", "run", "--bootstrap-servers", "127.0.0.1:1",
         "--input-topic", "in", "--output-topic", "out", "--metrics-port", "0",
         "--model", f"s3://{bucket}/missing"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stream-detector run: error: s3://"), lines
    assert "missing/LATEST: cannot be read" in lines[0]


# --- the service: hot reload from S3 on the embedded broker ----------------------------------


@pytest.mark.slow
def test_run_reloads_a_version_published_to_s3_and_refuses_a_corrupted_one(
        broker_bootstrap, topic_factory, group_id, model, bucket, tmp_path):
    from kafka_helpers import produce_json
    from service_helpers import (
        WINDOW,
        DetectorProcess,
        cli,
        event_versions,
        events_of,
        spiky_stream,
        wait_until,
        wave,
        write_long,
    )

    url = f"s3://{bucket}/live"
    v1 = S3Source(*parse_s3_url(url), cache_dir=tmp_path / "publisher").publish(model)
    src, out = topic_factory(1), topic_factory(1)
    det = DetectorProcess(broker_bootstrap, src, out, group_id, url,
                          ["--events", "windows", "--model-poll-s", "0.5",
                           "--shadow-windows", "0"],  # served at once (test_shadow: shadow)
                          log=tmp_path / "det.log")
    msgs = spiky_stream()

    loaded = 'stream_detector_model_reloads_total{result="loaded"}'
    refused = 'stream_detector_model_reloads_total{result="refused"}'
    try:
        det.wait_ready()
        produce_json(broker_bootstrap, src, msgs[:200])
        wait_until(lambda: v1 in event_versions(broker_bootstrap, out), 60, "events from v1", det._tail)
        # a new version, published by `train --out s3://...`
        data = write_long(tmp_path / "train.csv", {f"train-{i}": wave(600, seed=200 + i)
                                                   for i in range(2)})
        cli("train", "--model", "conv1d", "--input", str(data), "--window", str(WINDOW),
            "--epochs", "3", "--out", url, "--seed", "2", "--quiet", "--decision", "static")
        body = boto3.client("s3").get_object(Bucket=bucket, Key="live/LATEST")["Body"].read()
        v2 = body.decode().strip()
        assert v2 != v1
        wait_until(lambda: det.value(loaded) == 1, 60, "reload from S3", det._tail)
        assert det.value(f'stream_detector_model_info{{model="conv1d",version="{v2}",'
                         f'window="{WINDOW}"}}') == 1
        produce_json(broker_bootstrap, src, msgs[200:400])
        wait_until(lambda: v2 in event_versions(broker_bootstrap, out), 60, "events from v2", det._tail)
        # a corrupted upload: v1's metadata with a damaged model.keras
        good = (model / "model.keras").read_bytes()
        put(bucket, "live/v3/metadata.json", (model / "metadata.json").read_bytes())
        put(bucket, "live/v3/model.keras", good[: len(good) // 2])
        put(bucket, "live/LATEST", b"v3\n")
        wait_until(lambda: det.value(refused) >= 1, 30, "refusal", det._tail)
        produce_json(broker_bootstrap, src, msgs[400:])
        det.wait_value("stream_detector_windows_scored_total", 600 - WINDOW + 1)
        last = [e["value"] for e in events_of(broker_bootstrap, out)
                if e["value"]["source"]["offset"] >= 400]
        assert last and {e["model_version"] for e in last} == {v2}, "old model keeps serving"
        assert det.value(refused) == 1, "a refused version is refused once, not every poll"
        assert det.value(loaded) == 1
        assert "sha256" in (tmp_path / "det.log").read_text()
        assert det.proc.poll() is None
    finally:
        det.terminate()
