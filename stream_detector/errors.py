"""The exception hierarchy: one root, and one subclass per thing that can go wrong."""

from __future__ import annotations


class StreamDetectorError(Exception):
    """Root of every error this package raises on purpose."""


class InputError(StreamDetectorError):
    """A user's file or argument is unusable (exit code 2); the message names the place."""


class ConfigError(InputError):
    """A flag, environment variable or config-file value is invalid."""


class MissingExtra(StreamDetectorError):
    """A command needs an optional dependency that is not installed (an extra of the package)."""

    def __init__(self, what: str, package: str, extra: str) -> None:
        super().__init__(f"{what} needs {package}: install stream-detector[{extra}]")


class InvalidRecord(StreamDetectorError):
    """One input message is bad input; ``reason`` is a metric label from a closed set."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ModelError(StreamDetectorError):
    """The model cannot be built, loaded or applied."""


class ArtifactError(ModelError, InputError):
    """A model artifact is missing, damaged or does not match what it claims."""


class ModelStoreError(InputError):
    """The model store (``run --model s3://...``) cannot be reached or read."""


class ShapeMismatch(ModelError, InputError):
    """Data does not have the window or feature count the model expects."""


class DeliveryError(StreamDetectorError):
    """The broker did not confirm an event; offsets must not be committed."""
