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
  into a local cache, and ``model.keras`` must match ``metadata.json``'s ``model_sha256``
  before anything loads it. A refused version is tried again when ``LATEST`` is written
  again.

Credentials, region and endpoint come from boto3's standard settings
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``
or ``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores, ``AWS_PROFILE``, IAM
roles). Downloads go under the temporary directory (``TMPDIR``), the serving and the
newest version at most.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from stream_detector.artifact import (
    METADATA_FILE,
    MODEL_FILE,
    check_model_digest,
    read_metadata,
)
from stream_detector.errors import ArtifactError, InputError, ModelStoreError

log = logging.getLogger(__name__)

POINTER = "LATEST"
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ModelSource(Protocol):
    """A place new model versions appear in."""

    location: str

    def open(self) -> Path:
        """The directory of the version that serves now (start-up); raises
        :class:`InputError` when there is none or it cannot be had."""

    def poll(self) -> Path | None:
        """The directory of a version not handed out before, else None.

        Raises :class:`ArtifactError` for a new version that is refused (the caller counts
        it) and :class:`ModelStoreError` when the source cannot be read now.
        """


def is_store_url(location: str) -> bool:
    return "://" in location


def open_source(location: str) -> ModelSource:
    """The source for ``--model``: ``s3://bucket/prefix``, or a directory path."""
    if not is_store_url(location):
        return DirSource(location)
    return S3Source(*parse_s3_url(location))


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
    """A model directory, watched through its two files' mtime and size."""

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

    def open(self) -> Path:
        self._seen = self._signature()
        return Path(self.location)

    def poll(self) -> Path | None:
        if self._signature() == self._seen:
            return None
        time.sleep(0.2)  # let a writer finish the pair of files
        self._seen = self._signature()
        return Path(self.location)


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
                 client: Any = None) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
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
            body = got["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise ModelStoreError(f"{self.url(POINTER)}: cannot be read ({_reason(exc)})"
                                  ) from None
        version = bytes(body).decode("utf-8", "replace").strip()
        if not _VERSION_NAME.fullmatch(version):
            raise ModelStoreError(f"{self.url(POINTER)}: {version[:80]!r} is not a version "
                                  "name (one line, the folder next to LATEST)")
        self._pointer_written = str(got.get("LastModified", ""))
        return version

    def open(self) -> Path:
        version = self.latest()
        path = self.fetch(version)
        self._served = version
        return path

    def poll(self) -> Path | None:
        version = self.latest()
        attempt = (version, self._pointer_written)
        if version == self._served or attempt == self._refused:
            return None
        try:
            path = self.fetch(version)
        except ModelStoreError as exc:
            if attempt == self._failed:  # said once already; try again at the next poll
                log.debug("%s", exc)
                return None
            self._failed = attempt
            raise ArtifactError(str(exc)) from None
        except ArtifactError:
            self._refused = attempt
            raise
        self._served, self._failed = version, None
        return path

    def fetch(self, version: str) -> Path:
        """Download ``version`` into the cache and check it; the local directory.

        :class:`ModelStoreError` when a file cannot be downloaded, :class:`ArtifactError`
        when the files are not a matching artifact (damaged, or a sha256 mismatch).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        dest = self._cache / version
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self._cache))
        try:
            for name in (METADATA_FILE, MODEL_FILE):
                try:
                    self.client.download_file(self.bucket, f"{self.prefix}/{version}/{name}",
                                              str(tmp / name))
                except (BotoCoreError, ClientError) as exc:
                    raise ModelStoreError(f"{self.url(version, name)}: download failed "
                                          f"({_reason(exc)})") from None
            self._verify(tmp, version)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune(keep={version, self._served})
        return dest

    def _verify(self, local: Path, version: str) -> None:
        """The cheap checks before Keras sees the file: metadata shape and sha256."""
        try:
            meta = read_metadata(local)
        except ArtifactError as exc:
            raise ArtifactError(str(exc).replace(str(local), self.url(version))) from None
        check_model_digest(local, meta, self.url(version, MODEL_FILE))

    def _prune(self, keep: set[str | None]) -> None:
        """Only the serving and the newest version stay in the cache."""
        for entry in self._cache.iterdir():
            if entry.name not in keep and not entry.name.startswith("."):
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
        if not _VERSION_NAME.fullmatch(version):
            raise InputError(f"{version!r} is not a version name (letters, digits, . _ -)")
        check_model_digest(local, meta)
        try:
            for name in (MODEL_FILE, METADATA_FILE):
                self.client.upload_file(str(local / name), self.bucket,
                                        f"{self.prefix}/{version}/{name}")
            # last: a poller that sees the new pointer finds both files in place
            self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{POINTER}",
                                   Body=(version + "\n").encode(), ContentType="text/plain")
        except (BotoCoreError, ClientError) as exc:
            raise ModelStoreError(f"{self.url(version)}: upload failed ({_reason(exc)})"
                                  ) from None
        return version
