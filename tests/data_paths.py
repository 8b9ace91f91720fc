"""Where the staged public data sets live, and skip markers for tests that need them.

The data sits next to the repository in ``../shared/data`` (not committed);
``STREAM_DETECTOR_DATA`` points elsewhere. Tests that need a file skip with the path
they looked for, so a missing data set never reads as a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_ROOT = Path(
    os.environ.get(
        "STREAM_DETECTOR_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
ECG_CSV = DATA_ROOT / "ecg" / "ecg_discord_test.csv"
CARDIO_CSV = DATA_ROOT / "odds" / "cardio.csv"


def needs(path: Path) -> pytest.MarkDecorator:
    """Skip unless ``path`` exists, naming it and the variable that moves it."""
    return pytest.mark.skipif(
        not path.is_file(),
        reason=f"data file {path} not staged (set STREAM_DETECTOR_DATA to the shared data folder)",
    )
