"""``BatchHistogram``: a Prometheus histogram observed a batch at a time."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# the switch prometheus_client's own metrics read for their _created samples
_EXPOSE_CREATED = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "false").lower() not in (
    "true", "1", "t")


class BatchHistogram(Collector):
    """A histogram observed a batch at a time, exposed as a prometheus_client ``Histogram``
    with the same name, help and buckets would be (``_bucket{le}``, ``_count``, ``_sum``,
    ``_created``).

    One ``searchsorted`` and ``bincount`` per batch instead of one ``observe`` per value.
    The loop observes and the HTTP thread scrapes, so the counts and the sum change
    together under a lock.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = np.array(bounds)
        # le as Histogram writes it ("0.005", "1.0", "+Inf"; prometheus_client.utils is untyped)
        self._le = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        self._counts = np.zeros(len(bounds), dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every value of ``values`` (any shape)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        # bucket i holds bounds[i-1] < value <= bounds[i], as Histogram.observe counts
        # (a NaN sorts past the last bucket: in the sum only, as there)
        n = len(self._bounds)
        counts = np.bincount(np.searchsorted(self._bounds, v, side="left"), minlength=n)[:n]
        total = float(v.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterable[Metric]:
        """The family without samples: lets the registry refuse a clashing name."""
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        """The histogram as of now (cumulative buckets, as the exposition wants)."""
        with self._lock:
            counts, total = self._counts.copy(), self._sum
        cumulative = np.cumsum(counts).astype(np.float64).tolist()
        family = HistogramMetricFamily(self.name, self.documentation,
                                       buckets=list(zip(self._le, cumulative)), sum_value=total)
        if _EXPOSE_CREATED:
            family.add_sample(f"{self.name}_created", {}, self._created)
        return [family]
