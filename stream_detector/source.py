"""Decode and validate input messages (Kafka value bytes -> :class:`Reading`).

Every way a message can be bad raises :class:`InvalidRecord` with a reason from
``metrics.INVALID_REASONS``; nothing else escapes the decoder. What it accepts fits every
later stage: values fit float32, timestamps fit ``datetime`` (events carry ISO times),
keys encode to UTF-8 (Kafka keys, the changelog), so no accepted message fails at a
checkpoint or at publish.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream_detector.datasets import parse_timestamp
from stream_detector.errors import InvalidRecord
from stream_detector.records import Reading


@dataclass(frozen=True)
class Fields:
    """Names of the JSON fields of an input message (configurable)."""

    key: str = "key"
    ts: str = "ts"
    value: str = "value"
    values: str = "values"
    features: str = "features"


_F32_MAX = float(np.finfo(np.float32).max)  # values are stored as float32
# epoch seconds that datetime holds, 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z: every
# event carries its window's times in ISO-8601 (records.iso)
TS_MIN = -62_135_596_800.0
TS_MAX = 253_402_300_799.0
MAX_KEY_CHARS = 1024


class _Overflow(float):
    """A finite JSON number beyond float64 range (``1e400``), which json reads as inf."""


def _lenient_float(text: str) -> float:
    v = float(text)
    return v if math.isfinite(v) else _Overflow(v)


def _number(x: Any, what: str) -> float:
    # bool is an int in Python but never a measurement
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise InvalidRecord("non_numeric", f"{what} must be a number, got {type(x).__name__}")
    if type(x) is _Overflow:
        raise InvalidRecord("value_out_of_range", f"{what} is beyond float64 range")
    try:
        v = float(x)
    except OverflowError:  # an integer beyond float range
        raise InvalidRecord("value_out_of_range",
                            f"{what} is an integer beyond float64 range") from None
    if not math.isfinite(v):
        raise InvalidRecord("non_finite", f"{what} is {v} (NaN or Infinity)")
    if abs(v) > _F32_MAX:
        raise InvalidRecord("value_out_of_range",
                            f"{what} {v:g} is beyond float32 range (+-{_F32_MAX:.7g})")
    return v


def _epoch(ts: float, what: str) -> float:
    """``ts`` (epoch seconds) if ``datetime`` can hold it, else InvalidRecord."""
    if not TS_MIN <= ts <= TS_MAX:  # NaN fails both
        raise InvalidRecord("bad_timestamp", f"{what} is {ts!r} s, outside years 1-9999")
    return ts


def _key_text(key: str) -> str:
    """``key`` if it can be a Kafka key (UTF-8, bounded), else InvalidRecord."""
    if len(key) > MAX_KEY_CHARS:
        raise InvalidRecord("oversize", f"series key of {len(key)} characters > {MAX_KEY_CHARS}")
    if not key.isascii():
        try:
            key.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a "\ud800" escape
            raise InvalidRecord("bad_key", f"series key is not valid Unicode: {exc.reason} "
                                f"at character {exc.start}") from None
    return key


Plain = tuple[str, float, float]  # (key, ts, value) of a message of the common shape


def _none(value: Any) -> None:
    return None


def _lenient(value: bytes) -> Any:
    """The document by Python's json, None if it refuses it too.

    It accepts what orjson refuses: NaN, Infinity, numbers beyond float64 (``_Overflow``),
    integers beyond 64 bits, lone surrogates (escaped, or as bytes), UTF-16 and UTF-32.
    The checks after it judge each of them.
    """
    try:
        return json.loads(value, parse_float=_lenient_float)
    except (ValueError, RecursionError):
        return None


class Decoder:
    """Turns one message into a :class:`Reading` for a model with ``n_features`` inputs.

    Parameters
    ----------
    n_features: values per point the model expects.
    record_mode: read ``features`` (array, or object in ``feature_names`` order).
    feature_names: the model's feature names (for object-shaped ``features``).
    max_bytes: larger messages are rejected as ``oversize`` before parsing.
    """

    def __init__(
        self, n_features: int, fields: Fields | None = None, record_mode: bool = False,
        feature_names: list[str] | None = None, max_bytes: int = 65536,
    ) -> None:
        self.n_features = n_features
        self.fields = fields or Fields()
        self.record_mode = record_mode
        self.feature_names = feature_names or []
        self.max_bytes = max_bytes
        self.plain: Callable[[bytes | None], Plain | None] = _none
        self._plain_doc: Callable[[Any], Plain | None] = _none
        if n_features == 1 and not record_mode:
            self.plain, self._plain_doc = self._plain_decoders()

    def _plain_decoders(self) -> tuple[Callable[[bytes | None], Plain | None],
                                       Callable[[Any], Plain | None]]:
        """``plain(value)`` and its check of a parsed document, ``plain_doc(doc)``: the
        (key, ts, value) of a message of the common shape, else None.

        The common shape: a JSON object with a string key, a numeric epoch ``ts`` and one
        numeric ``value`` (no ``values``), for a one-feature model, checked inline (the
        service's hot path: names are bound once). None says nothing about validity:
        :meth:`decode` decides, and names the error.
        """
        loads, bad_json = orjson.loads, orjson.JSONDecodeError
        f, max_bytes, top = self.fields, self.max_bytes, _F32_MAX
        ts_min, ts_max, max_key = TS_MIN, TS_MAX, MAX_KEY_CHARS
        fk, ft, fv, fvs = f.key, f.ts, f.value, f.values

        def plain_doc(doc: Any) -> Plain | None:
            if type(doc) is not dict:
                return None
            key: Any = doc.get(fk)  # Any: checked by exact type below
            ts: Any = doc.get(ft)
            v: Any = doc.get(fv)
            tt, tv = type(ts), type(v)
            # orjson's strings are valid UTF-8 and its floats finite
            if (type(key) is str and 0 < len(key) <= max_key and (tt is float or tt is int)
                    and ts_min <= ts <= ts_max and (tv is float or tv is int)
                    and -top <= v <= top and doc.get(fvs) is None):
                return key, float(ts), float(v)
            return None

        def plain(value: bytes | None) -> Plain | None:
            if value is None or len(value) > max_bytes:
                return None
            try:
                return plain_doc(loads(value))
            except bad_json:
                return None

        return plain, plain_doc

    def decode_point(self, value: bytes | None, msg_key: bytes | None,
                     kafka_ts: float | None) -> tuple[str, float, Any]:
        """(key, ts, values) of one message; the service's hot path.

        A message of the common shape (see ``plain``) comes back with its value as a
        float; any other document goes through the full checks of :meth:`decode` (the
        same errors), its values as an array.
        """
        doc, strict = self._load(value)
        p = self._plain_doc(doc) if strict else None  # its check trusts orjson's strings
        if p is not None:
            return p
        r = self._reading(doc, msg_key, kafka_ts)
        return r.key, r.ts, r.values

    def decode(self, value: bytes | None, msg_key: bytes | None, kafka_ts: float | None) -> Reading:
        return self._reading(self._load(value)[0], msg_key, kafka_ts)

    def _load(self, value: bytes | None) -> tuple[Any, bool]:
        """The message's JSON document (any shape) and whether orjson read it (else the
        lenient parser did), or InvalidRecord."""
        if value is None:
            raise InvalidRecord("not_json", "empty message (tombstone)")
        if len(value) > self.max_bytes:
            raise InvalidRecord("oversize", f"{len(value)} bytes > limit {self.max_bytes}")
        try:
            return orjson.loads(value), True
        except orjson.JSONDecodeError as exc:
            doc = _lenient(value)  # NaN / Infinity / 1e400: JSON-ish, but not finite
            if doc is None:
                raise InvalidRecord("not_json", str(exc)[:200]) from None
            return doc, False

    def _reading(self, doc: Any, msg_key: bytes | None, kafka_ts: float | None) -> Reading:
        if not isinstance(doc, dict):
            raise InvalidRecord("not_object", f"expected a JSON object, got {type(doc).__name__}")
        f = self.fields
        key = doc.get(f.key)
        if key is None:
            if not msg_key:
                raise InvalidRecord("missing_key", f"no {f.key!r} field and no message key")
            if len(msg_key) > 4 * MAX_KEY_CHARS:
                raise InvalidRecord("oversize", f"message key of {len(msg_key)} bytes")
            try:
                key = msg_key.decode()
            except UnicodeDecodeError as exc:
                raise InvalidRecord("bad_key", f"message key is not UTF-8: {exc.reason} "
                                    f"at byte {exc.start}") from None
        elif not isinstance(key, str) or not key:
            raise InvalidRecord("missing_key", f"{f.key!r} must be a non-empty string")
        key = _key_text(key)
        ts_raw = doc.get(f.ts)
        if ts_raw is None:
            if kafka_ts is None:
                raise InvalidRecord("bad_timestamp", f"no {f.ts!r} field and no message timestamp")
            ts = _epoch(kafka_ts, "message timestamp")
        elif isinstance(ts_raw, str):
            try:
                ts = parse_timestamp(ts_raw)
            except (ValueError, OverflowError):
                raise InvalidRecord("bad_timestamp", f"cannot parse {ts_raw[:64]!r}") from None
            ts = _epoch(ts, f"{f.ts!r} {ts_raw[:64]!r}")
        elif isinstance(ts_raw, (int, float)) and not isinstance(ts_raw, bool):
            # compared before float(): an integer beyond float64 would raise there
            if not TS_MIN <= ts_raw <= TS_MAX:
                shown = str(ts_raw)
                shown = shown if len(shown) <= 40 else f"{shown[:20]}...({len(shown)} digits)"
                raise InvalidRecord("bad_timestamp",
                                    f"epoch seconds {shown}, outside years 1-9999")
            ts = float(ts_raw)
        else:
            raise InvalidRecord("bad_timestamp", f"{f.ts!r} must be a string or a number")
        return Reading(key=key, ts=ts, values=self._values(doc))

    def _values(self, doc: dict[str, Any]) -> np.ndarray:
        f = self.fields
        if self.n_features == 1 and not self.record_mode:
            v: Any = doc.get(f.value)
            t = type(v)  # exact types: bool is not a measurement
            if (t is float or t is int) and doc.get(f.values) is None and -_F32_MAX <= v <= _F32_MAX:
                return np.array((v,), dtype=np.float32)
        if self.record_mode:
            raw = doc.get(f.features)
            if raw is None:
                raise InvalidRecord("missing_value", f"no {f.features!r} field")
            if isinstance(raw, dict):
                missing = [n for n in self.feature_names if n not in raw]
                if missing or len(raw) != self.n_features:
                    raise InvalidRecord(
                        "feature_count",
                        f"{f.features!r} must have the model's features; missing {missing[:5]}"
                        if missing else f"{len(raw)} features, model has {self.n_features}",
                    )
                vals = [_number(raw[n], f"{f.features}.{n}") for n in self.feature_names]
            elif isinstance(raw, list):
                vals = [_number(v, f.features) for v in raw]
            else:
                raise InvalidRecord("non_numeric", f"{f.features!r} must be an array or object")
        elif f.values in doc and doc[f.values] is not None:
            raw = doc[f.values]
            if not isinstance(raw, list):
                raise InvalidRecord("non_numeric", f"{f.values!r} must be an array of numbers")
            vals = [_number(v, f.values) for v in raw]
        elif f.value in doc and doc[f.value] is not None:
            vals = [_number(doc[f.value], f.value)]
        else:
            raise InvalidRecord("missing_value", f"no {f.value!r} or {f.values!r} field")
        if len(vals) != self.n_features:
            raise InvalidRecord(
                "feature_count", f"{len(vals)} value(s), the model expects {self.n_features}"
            )
        return np.asarray(vals, dtype=np.float32)
