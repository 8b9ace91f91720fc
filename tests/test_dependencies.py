"""Declared dependencies: no version with a known safe_mode bypass is admitted."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_keras_is_at_least_3_11():
    # 3.10.x has safe_mode bypasses (CVE-2025-8747, CVE-2025-9906), fixed in 3.11
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    keras = [r for r in reqs if re.match(r"keras\b", r)]
    assert len(keras) == 1, reqs
    low = re.search(r">=\s*(\d+)\.(\d+)", keras[0])
    assert low is not None, keras[0]
    assert (int(low.group(1)), int(low.group(2))) >= (3, 11), keras[0]
