"""Kafka plumbing with no detector logic: client properties (``properties``), topic
admin (``admin``), produce with backpressure (``produce``) and the embedded broker for
local use and tests (``embedded``)."""
