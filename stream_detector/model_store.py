"""Where ``run --model`` gets its artifact: a local directory, or an S3 location.

A source hands out local directories holding ``model.keras`` + ``metadata.json``, which
:func:`~stream_detector.artifact.load_artifact` then loads and checks:

- :class:`DirSource` is the directory itself. A new version is noticed through the files'
  size and mtime (``train`` writes ``metadata.json`` last).
- :class:`S3Source` reads ``s3://bucket/prefix`` laid out as::

      <prefix>/<version>/model.keras
      <prefix>/<version>/metadata.json
      <prefix>/LATEST              one line: the <version> that serves

  A publisher uploads the version's two files first and writes ``LATEST`` last (one PUT,
  atomic in S3), so a poller never sees half a version. A new ``LATEST`` is downloaded
  into a local cache (at most ``--model-max-bytes`` per version, ``LATEST`` at most
  1 KiB), and ``model.keras`` must match ``metadata.json``'s ``model_sha256`` before
  anything loads it. A refused version (at download, or when it fails to load) is tried
  again when ``LATEST`` is written again.

A version the promotion gate refused (or that failed while in shadow) is marked with a
small ``REFUSED`` file (JSON: version, model_sha256, when, why, and the version that kept
serving): ``<dir>/REFUSED`` next to a directory's artifact, ``<prefix>/<version>/REFUSED``
in S3 (needs write access there; without it a warning says the refusal is not kept). A
start-up or a poll that finds the marker does not serve that version: a directory then
exits 2 with the reason, S3 serves the version that kept serving when it was refused.
Deleting the marker (or ``publish`` of that version again) lets it be tried again.

Credentials, region and endpoint come from boto3's standard settings
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``
or ``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores, ``AWS_PROFILE``, IAM
roles). Downloads go under the temporary directory (``TMPDIR``), the serving and the
newest version at most.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from stream_detector.artifact import (
    METADATA_FILE,
    MODEL_FILE,
    VERSION_NAME,
    check_model_digest,
    read_metadata,
)
from stream_detector.errors import ArtifactError, InputError, ModelStoreError

log = logging.getLogger(__name__)

POINTER = "LATEST"
REFUSED = "REFUSED"
_POINTER_MAX = 1024  # LATEST is one line, a version name
_MARKER_MAX = 64 * 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class ModelSource(Protocol):
    """A place new model versions appear in."""

    location: str

    def open(self, refusals: bool = True) -> Path:
        """The directory of the version that serves now (start-up); raises
        :class:`InputError` when there is none or it cannot be had. ``refusals``: honour
        the ``REFUSED`` markers (``run``; ``score`` reads what the location holds)."""

    def poll(self, in_use: Collection[str] = ()) -> Path | None:
        """The directory of a version not handed out before, else None. ``in_use``: the
        versions (metadata.json's) the detector holds; their files are kept.

        Raises :class:`ArtifactError` for a new version that is refused (the caller counts
        it) and :class:`ModelStoreError` when the source cannot be read now.
        """

    def refused(self, path: Path) -> None:
        """The version handed out as ``path`` was refused after :meth:`poll` (it does not
        load, or does not fit the running model): dropped, and tried again only when it
        is published again."""

    def persist_refusal(self, version: str, sha256: str, reason: str, serving: str) -> None:
        """Mark ``version`` (``model_sha256`` ``sha256``) refused, where the next start and
        every replica see it (the ``REFUSED`` marker); ``serving``: the version that kept
        serving. Logs a warning when the marker cannot be written."""


def is_store_url(location: str) -> bool:
    return "://" in location


def open_source(location: str, max_bytes: int = DEFAULT_MAX_BYTES) -> ModelSource:
    """The source for ``--model``: ``s3://bucket/prefix``, or a directory path."""
    if not is_store_url(location):
        return DirSource(location)
    return S3Source(*parse_s3_url(location), max_bytes=max_bytes)


def marker(version: str, sha256: str, reason: str, serving: str | None) -> bytes:
    """The ``REFUSED`` marker's content."""
    doc = {"version": version, "model_sha256": sha256, "reason": reason[:2000],
           "refused_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
           "serving": serving}
    return (json.dumps(doc) + "\n").encode()


def parse_marker(raw: bytes) -> dict[str, Any]:
    """A ``REFUSED`` marker's document; a damaged one still refuses (it is there)."""
    try:
        doc = json.loads(raw[:_MARKER_MAX])
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict):
        return {"reason": "(damaged marker)"}
    return doc


def _refusal_text(where: str, doc: dict[str, Any]) -> str:
    return (f"refused by the promotion gate at {doc.get('refused_at', '?')} "
            f"({' '.join(str(doc.get('reason', '')).split())[:300]}); delete {where} to "
            "try it again")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end)."""
    scheme, _, rest = url.partition("://")
    if scheme != "s3":
        raise InputError(f"--model {url}: only s3:// URLs are supported (or a directory)")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise InputError(f"--model {url}: {bucket!r} is not an S3 bucket name")
    if not prefix:
        raise InputError(f"--model {url}: give a prefix, s3://{bucket}/PREFIX")
    return bucket, prefix


class DirSource:
    """A model directory, watched through its two files' mtime and size; a refusal is
    kept in ``REFUSED`` next to them."""

    def __init__(self, path: str) -> None:
        self.location = path
        self._seen = self._signature()

    def _signature(self) -> tuple[int, ...]:
        sig: list[int] = []
        for name in (METADATA_FILE, MODEL_FILE):
            try:
                st = os.stat(os.path.join(self.location, name))
                sig += [st.st_mtime_ns, st.st_size]
            except OSError:
                sig += [-1, -1]
        return tuple(sig)

    def _marked(self) -> str | None:
        """Why the artifact in the directory must not serve (its version and sha256 are
        in ``REFUSED``), else None."""
        path = Path(self.location) / REFUSED
        try:
            raw = path.read_bytes()[:_MARKER_MAX]
            meta = json.loads((Path(self.location) / METADATA_FILE).read_bytes())
        except (OSError, ValueError):
            return None  # no marker; or metadata that load_artifact will refuse
        doc = parse_marker(raw)
        if not isinstance(meta, dict) or (doc.get("version"), doc.get("model_sha256")) != (
                meta.get("version"), meta.get("model_sha256")):
            return None  # the marker is about another version (or damaged: about none)
        return f"{self.location}: version {meta.get('version')!r} " + _refusal_text(
            str(path), doc)

    def open(self, refusals: bool = True) -> Path:
        self._seen = self._signature()
        why = self._marked() if refusals else None
        if why is not None:
            raise InputError(why)
        return Path(self.location)

    def poll(self, in_use: Collection[str] = ()) -> Path | None:
        if self._signature() == self._seen:
            return None
        time.sleep(0.2)  # let a writer finish the pair of files
        self._seen = self._signature()
        why = self._marked()
        if why is not None:
            raise ArtifactError(why)
        return Path(self.location)

    def refused(self, path: Path) -> None:
        pass  # the files stay where the user put them; a restart refuses them again

    def persist_refusal(self, version: str, sha256: str, reason: str, serving: str) -> None:
        path = Path(self.location) / REFUSED
        tmp = path.with_name(f".{REFUSED}.tmp")
        try:
            tmp.write_bytes(marker(version, sha256, reason, serving))
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot keep the refusal of %s in %s (%s): a restart would serve it",
                        version, path, exc)
            return
        log.info("refusal of %s kept in %s", version, path)


def _reason(exc: Exception) -> str:
    """A botocore error as one short line (its messages can be long)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _process_cache() -> Path:
    """This process's download directory, emptied now and removed at exit. Named by pid:
    a restarted container (pid 1 again) reuses, and so cleans, its predecessor's."""
    path = Path(tempfile.gettempdir()) / f"stream-detector-models-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class S3Source:
    """``s3://bucket/prefix`` with versions under it and the ``LATEST`` pointer."""

    def __init__(self, bucket: str, prefix: str, cache_dir: Path | None = None,
                 client: Any = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.max_bytes = max_bytes
        self.location = f"s3://{bucket}/{self.prefix}"
        self._client = client
        self._cache_dir = cache_dir  # made on the first download
        self._served: str | None = None  # the version last handed out
        # (version, when LATEST was written) of a version refused for its content, not
        # tried again until LATEST is written again; and of one whose download failed,
        # retried at every poll without another refusal
        self._refused: tuple[str, str] | None = None
        self._failed: tuple[str, str] | None = None
        self._pointer_written = ""  # LATEST's Last-Modified at the last read
        # the last poll's hand-out, until the caller refuses it: (version, attempt, the
        # version served before)
        self._offered: tuple[str, tuple[str, str], str | None] | None = None
        self._versions: dict[str, tuple[str, str]] = {}  # folder -> (version, sha256)

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # botocore says at INFO where it found credentials: not a line for every run
            logging.getLogger("botocore").setLevel(logging.WARNING)

            # short connect/read timeouts: an unreachable store must not stall start-up
            # for minutes; retries as boto3 is configured (AWS_MAX_ATTEMPTS)
            self._client = boto3.client("s3", config=Config(connect_timeout=5,
                                                            read_timeout=30))
        return self._client

    @property
    def _cache(self) -> Path:
        if self._cache_dir is None:
            self._cache_dir = _process_cache()
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        return self._cache_dir

    def url(self, *parts: str) -> str:
        return "/".join([self.location, *parts])

    def latest(self) -> str:
        """The version ``LATEST`` names; :class:`ModelStoreError` when it cannot be read."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{POINTER}")
            size = got.get("ContentLength")
            if size is not None and size > _POINTER_MAX:
                got["Body"].close()
                raise ModelStoreError(f"{self.url(POINTER)}: {size} bytes, not a version name "
                                      f"(one line, at most {_POINTER_MAX} bytes)")
            body = got["Body"].read(_POINTER_MAX + 1)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise ModelStoreError(f"{self.url(POINTER)}: cannot be read ({_reason(exc)})"
                                  ) from None
        if len(body) > _POINTER_MAX:
            raise ModelStoreError(f"{self.url(POINTER)}: over {_POINTER_MAX} bytes, not a "
                                  "version name (one line)")
        version = bytes(body).decode("utf-8", "replace").strip()
        if not VERSION_NAME.fullmatch(version):
            raise ModelStoreError(f"{self.url(POINTER)}: {version[:80]!r} is not a version "
                                  "name (one line, the folder next to LATEST)")
        self._pointer_written = str(got.get("LastModified", ""))
        return version

    def _marker(self, version: str) -> dict[str, Any] | None:
        """``version``'s ``REFUSED`` marker, None when it has none."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket,
                                         Key=f"{self.prefix}/{version}/{REFUSED}")
            raw = got["Body"].read(_MARKER_MAX)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise ModelStoreError(f"{self.url(version, REFUSED)}: cannot be read "
                                  f"({_reason(exc)})") from None
        except (BotoCoreError, OSError) as exc:
            raise ModelStoreError(f"{self.url(version, REFUSED)}: cannot be read "
                                  f"({_reason(exc)})") from None
        return parse_marker(raw)

    def open(self, refusals: bool = True) -> Path:
        version = self.latest()
        doc = self._marker(version) if refusals else None
        if doc is not None:
            # the gate refused what LATEST names: serve what kept serving then
            why = f"{self.url(version)}: " + _refusal_text(self.url(version, REFUSED), doc)
            fallback = doc.get("serving")
            if not (isinstance(fallback, str) and VERSION_NAME.fullmatch(fallback)
                    and fallback != version and self._marker(fallback) is None):
                raise InputError(f"{why}; no version to fall back to: write another into "
                                 f"{self.url(POINTER)}")
            log.warning("%s; serving %s, which served when it was refused", why, fallback)
            self._refused = (version, self._pointer_written)
            version = fallback
        path = self.fetch(version)
        self._served = version
        return path

    def poll(self, in_use: Collection[str] = ()) -> Path | None:
        version = self.latest()
        attempt = (version, self._pointer_written)
        if version == self._served or attempt == self._refused:
            return None
        try:
            doc = self._marker(version)
            if doc is not None:
                raise ArtifactError(f"{self.url(version)}: " + _refusal_text(
                    self.url(version, REFUSED), doc))
            path = self.fetch(version, in_use)
        except ModelStoreError as exc:
            if attempt == self._failed:  # said once already; try again at the next poll
                log.debug("%s", exc)
                return None
            self._failed = attempt
            raise ArtifactError(str(exc)) from None
        except ArtifactError:
            self._refused = attempt
            raise
        self._offered = (version, attempt, self._served)
        self._served, self._failed = version, None
        return path

    def refused(self, path: Path) -> None:
        offered = self._offered
        if offered is None or offered[0] != path.name:
            return
        version, attempt, before = offered
        self._offered = None
        self._refused, self._served = attempt, before
        if version != before:
            self._versions.pop(version, None)
            shutil.rmtree(self._cache / version, ignore_errors=True)

    def persist_refusal(self, version: str, sha256: str, reason: str, serving: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        folders = [f for f, v in self._versions.items() if v == (version, sha256)]
        kept = next((f for f, v in self._versions.items() if v[0] == serving), None)
        for folder in folders:
            key = f"{self.prefix}/{folder}/{REFUSED}"
            try:
                self.client.put_object(Bucket=self.bucket, Key=key,
                                       Body=marker(version, sha256, reason, kept),
                                       ContentType="application/json")
            except (BotoCoreError, ClientError) as exc:
                log.warning("cannot keep the refusal of %s in %s (%s): a restart would "
                            "serve it", version, self.url(folder, REFUSED), _reason(exc))
                continue
            log.info("refusal of %s kept in %s", version, self.url(folder, REFUSED))

    def fetch(self, version: str, in_use: Collection[str] = ()) -> Path:
        """Download ``version`` into the cache and check it; the local directory.

        :class:`ModelStoreError` when a file cannot be downloaded, :class:`ArtifactError`
        when the files are not a matching artifact (damaged, a sha256 mismatch, more than
        ``max_bytes`` together). The cache keeps this version, the one served before and
        those whose metadata version is in ``in_use``.
        """
        dest = self._cache / version
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self._cache))
        try:
            budget = self.max_bytes
            for name in (METADATA_FILE, MODEL_FILE):
                budget -= self._download(version, name, tmp / name, budget)
            meta = self._verify(tmp, version)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._versions[version] = (str(meta["version"]), str(meta["model_sha256"]))
        self._prune(keep={version, self._served} | {
            f for f, v in self._versions.items() if v[0] in in_use})
        return dest

    def _download(self, version: str, name: str, dest: Path, budget: int) -> int:
        """One file of ``version`` into ``dest``, refused past ``budget`` bytes (checked
        before and while reading: the object may change in between); its size."""
        from botocore.exceptions import BotoCoreError, ClientError

        url = self.url(version, name)

        def too_big(size: int | str) -> ArtifactError:
            return ArtifactError(f"{url}: {size} bytes, over the {self.max_bytes} bytes a "
                                 "version may take (--model-max-bytes): refused")

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{version}/{name}")
            body = got["Body"]
            try:
                size = got.get("ContentLength")
                if size is not None and size > budget:
                    raise too_big(size)
                n = 0
                with dest.open("wb") as fh:
                    while chunk := body.read(1 << 20):
                        n += len(chunk)
                        if n > budget:
                            raise too_big(f"more than {n}")
                        fh.write(chunk)
            finally:
                body.close()
        except (BotoCoreError, ClientError, OSError) as exc:
            raise ModelStoreError(f"{url}: download failed ({_reason(exc)})") from None
        return n

    def _verify(self, local: Path, version: str) -> dict[str, Any]:
        """The checks before Keras sees the file: the whole metadata, and sha256."""
        try:
            meta = read_metadata(local)
        except ArtifactError as exc:
            raise ArtifactError(str(exc).replace(str(local), self.url(version))) from None
        check_model_digest(local, meta, self.url(version, MODEL_FILE))
        return meta

    def _prune(self, keep: set[str | None]) -> None:
        """Only the versions in ``keep`` stay in the cache (the serving, the newest)."""
        for entry in self._cache.iterdir():
            if entry.name not in keep and not entry.name.startswith("."):
                self._versions.pop(entry.name, None)
                shutil.rmtree(entry, ignore_errors=True)

    def check_bucket(self) -> None:
        """Fail early (before training) when the bucket cannot be reached."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise ModelStoreError(f"s3://{self.bucket}: cannot be reached ({_reason(exc)})"
                                  ) from None

    def publish(self, local: str | Path, version: str | None = None) -> str:
        """Upload an artifact directory as a new version, then point ``LATEST`` at it.

        The version is the artifact's own (``metadata.json``) unless given; returns it.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        local = Path(local)
        meta = read_metadata(local)
        version = version or str(meta["version"])
        if not VERSION_NAME.fullmatch(version):
            raise InputError(f"{version!r} is not a version name (letters, digits, . _ -)")
        check_model_digest(local, meta)
        try:
            for name in (MODEL_FILE, METADATA_FILE):
                self.client.upload_file(str(local / name), self.bucket,
                                        f"{self.prefix}/{version}/{name}")
            # published again: a refusal of an earlier upload under this name is void
            self.client.delete_object(Bucket=self.bucket,
                                      Key=f"{self.prefix}/{version}/{REFUSED}")
            # last: a poller that sees the new pointer finds both files in place
            self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{POINTER}",
                                   Body=(version + "\n").encode(), ContentType="text/plain")
        except (BotoCoreError, ClientError) as exc:
            raise ModelStoreError(f"{self.url(version)}: upload failed ({_reason(exc)})"
                                  ) from None
        return version
