"""stream_detector: streaming time-series anomaly detection with autoencoders on Kafka."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
