"""--log-format json: one JSON object per log line, for log pipelines."""

from __future__ import annotations

import io
import logging

import orjson

from stream_detector.logs import configure


def test_json_lines_carry_level_logger_message_and_exception() -> None:
    buf = io.StringIO()
    configure("json", "INFO", buf)
    try:
        log = logging.getLogger("stream_detector.test")
        log.info("assigned %s", [0, 1])
        log.debug("hidden")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        configure()
    lines = [orjson.loads(ln) for ln in buf.getvalue().splitlines()]
    assert [ln["level"] for ln in lines] == ["INFO", "ERROR"]
    assert lines[0]["message"] == "assigned [0, 1]" and lines[0]["logger"] == "stream_detector.test"
    assert lines[0]["ts"].endswith("Z") and "ValueError: boom" in lines[1]["exc"]


def test_text_is_the_default() -> None:
    buf = io.StringIO()
    configure(stream=buf)
    try:
        logging.getLogger("x").warning("plain")
    finally:
        configure()
    assert buf.getvalue().rstrip().endswith("WARNING x: plain")
