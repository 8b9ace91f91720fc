"""stream_detector: streaming time-series anomaly detection with autoencoders on Kafka.

The Python API (:mod:`stream_detector.api`): :func:`train` a model on arrays or a
DataFrame, :func:`save` and :func:`load` it, :func:`score` arrays offline, or feed points
to an :class:`OnlineDetector` for ``run``'s decisions without Kafka::

    import numpy as np
    import stream_detector as sd

    art = sd.train(np.sin(np.arange(2000) / 5.0), window=32, epochs=5)
    verdicts = sd.OnlineDetector(art).process((("s", t, np.sin(t / 5.0)) for t in range(500)))

The names are loaded on first use, so ``import stream_detector`` stays cheap (TensorFlow
is imported only once a model is built, loaded or scored).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__", "Artifact", "OnlineDetector", "Scores", "Verdict", "load", "save",
    "score", "train",
]

if TYPE_CHECKING:
    from stream_detector.api import OnlineDetector, Scores, Verdict, load, save, score, train
    from stream_detector.artifact import Artifact


def __getattr__(name: str) -> Any:
    if name == "Artifact":
        from stream_detector.artifact import Artifact

        return Artifact
    if name in __all__:
        from stream_detector import api

        return getattr(api, name)
    raise AttributeError(f"module 'stream_detector' has no attribute {name!r}")
