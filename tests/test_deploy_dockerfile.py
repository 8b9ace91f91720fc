"""Static checks of the Dockerfile (no Docker engine here, and hadolint is not packaged).

The Dockerfile is parsed into stages and instructions, and the checks are the ones the
deploy story relies on: a pinned slim base, multi-stage, a non-root numeric user in every
image target, ``stream-detector`` as the entrypoint, every dependency installed from a
hashed lock that covers setup.cfg, nothing secret baked in, and a ``.dockerignore`` that
keeps credentials and the virtualenv out of the build context.
"""

from __future__ import annotations

import configparser
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements" / "prod.lock"
BUILD_IN = ROOT / "requirements" / "build.in"

SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE|CREDENTIAL|SASL)", re.I)
SECRET_FILE = re.compile(r"(\.env\b|\.pem$|\.key$|\.p12$|\.jks$|id_rsa|\.netrc|\.pypirc|kubeconfig)")


@dataclass
class Instruction:
    cmd: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Return the global ARG defaults and the stages of a Dockerfile."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker
        if not buf:
            start = lineno
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append((start, buf + stripped))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for lineno, line in logical:
        cmd, _, args = line.partition(" ")
        cmd, args = cmd.upper(), args.strip()
        if cmd == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert m, f"line {lineno}: cannot parse FROM {args!r}"
            stages.append(Stage(base=m.group(1), name=m.group(2)))
        elif not stages:
            assert cmd == "ARG", f"line {lineno}: only ARG may precede the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(cmd, args, lineno))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def _resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


def _is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    # An exact release (3.11.13-slim-bookworm), never "latest" or a floating "3-slim".
    return bool(name) and "/" not in tag and re.match(r"\d+\.\d+\.\d+", tag) is not None


def _stage_chain(stages: list[Stage], stage: Stage) -> list[Stage]:
    """The stage and the stages it builds FROM, nearest first."""
    by_name = {s.name: s for s in stages if s.name}
    chain = [stage]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return chain


def _effective(stages: list[Stage], stage: Stage, cmd: str) -> Instruction | None:
    for s in _stage_chain(stages, stage):
        found = [i for i in s.instructions if i.cmd == cmd]
        if found:
            return found[-1]
    return None


def _image_targets(stages: list[Stage]) -> list[Stage]:
    """Stages that are shipped as images: the default (last) one and any named target
    built on the runtime stage (not the build stage)."""
    return [s for s in stages if s.name and s.name != "build" and s.base != "scratch"]


def test_multi_stage_with_pinned_slim_base(dockerfile):
    args, stages = dockerfile
    assert len(stages) >= 2, "expected a multi-stage build"
    names = {s.name for s in stages}
    external = [_resolve(s.base, args) for s in stages if s.base not in names]
    assert external, "no external base image"
    for image in external:
        assert "$" not in image, f"base image {image!r} has an ARG without default"
        assert _is_pinned(image), f"base image {image!r} is not pinned to an exact release"
        assert "slim" in image, f"base image {image!r} is not a slim image"
    # The runtime is not built on the build stage (no compilers or pip caches shipped).
    for stage in _image_targets(stages):
        assert "build" not in [s.name for s in _stage_chain(stages, stage)], stage.name


def test_every_image_target_runs_as_non_root(dockerfile):
    _, stages = dockerfile
    targets = _image_targets(stages)
    assert stages[-1] in targets, "the default target must be a runtime image"
    for stage in targets:
        user = _effective(stages, stage, "USER")
        assert user is not None, f"stage {stage.name}: no USER (would run as root)"
        uid = user.args.split(":")[0]
        assert uid.isdigit(), f"stage {stage.name}: USER {uid!r} is not numeric (runAsNonRoot needs a uid)"
        assert int(uid) != 0, f"stage {stage.name}: USER is root"
        # Nothing after USER switches back to root.
        for later in stage.instructions:
            if later.cmd == "USER":
                assert later.args.split(":")[0] not in ("0", "root")


def test_entrypoint_is_stream_detector(dockerfile):
    _, stages = dockerfile
    for stage in _image_targets(stages):
        entry = _effective(stages, stage, "ENTRYPOINT")
        assert entry is not None, f"stage {stage.name}: no ENTRYPOINT"
        assert json.loads(entry.args) == ["stream-detector"], entry.args
        cmd = _effective(stages, stage, "CMD")
        assert cmd is not None and json.loads(cmd.args)[0] == "run"
        health = _effective(stages, stage, "HEALTHCHECK")
        assert health is not None and "/healthz" in health.args
        expose = _effective(stages, stage, "EXPOSE")
        assert expose is not None and "9400" in expose.args.split()


def test_model_can_be_baked_by_build_arg_or_mounted(dockerfile):
    _, stages = dockerfile
    baked = [s for s in stages if s.name == "model-baked"]
    assert baked, "no model-baked target"
    instr = baked[0].instructions
    assert any(i.cmd == "ARG" and i.args.startswith("MODEL_DIR") for i in instr)
    assert any(i.cmd == "COPY" and "${MODEL_DIR}" in i.args for i in instr)
    # The default target has no model inside: it is mounted as a volume at run time.
    assert not any(i.cmd in ("COPY", "ADD") for i in stages[-1].instructions)


def test_read_only_root_filesystem_friendly(dockerfile):
    _, stages = dockerfile
    env = " ".join(
        i.args for s in _stage_chain(stages, stages[-1]) for i in s.instructions if i.cmd == "ENV"
    )
    # Caches TensorFlow/Keras/matplotlib would write under $HOME go to /tmp (an emptyDir).
    for var in ("KERAS_HOME=/tmp", "MPLCONFIGDIR=/tmp", "HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1"):
        assert var in env, f"{var} missing from the runtime ENV"


def _install_requires() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip()]


def test_cpu_tensorflow():
    requires = [str(r) for r in _install_requires()]
    assert any(re.search(r"tensorflow-cpu\b.*x86_64", r) for r in requires), (
        "x86_64 images must use tensorflow-cpu")
    text = DOCKERFILE.read_text()
    assert not re.search(r"pip install[^\n]*\btensorflow(?!-cpu)\b", text), "GPU TensorFlow"
    assert "tensorflow-cpu" in _lock() and "tensorflow" not in _lock()


# --- the lock the image installs from --------------------------------------------------------

def _lock() -> dict[str, tuple[Version, list[str]]]:
    """``requirements/prod.lock`` as {name: (version, hashes)}; asserts its form on the way:
    every requirement is ``name==version`` followed by at least one sha256 hash, and there
    is nothing else (no URL, editable, index option or unhashed line)."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    logical = re.sub(r"\\\n", " ", LOCK.read_text())
    for line in logical.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --hash=")
        req = Requirement(spec.strip())
        assert not req.url and not req.extras, line
        (pin,) = req.specifier
        assert pin.operator == "==" and "*" not in pin.version, f"not pinned: {spec}"
        assert options, f"no hash: {spec}"
        for h in options:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", h.strip()), f"{spec}: hash {h!r}"
        name = canonicalize_name(req.name)
        assert name not in entries, f"{name} twice"
        entries[name] = (Version(pin.version), [h.strip() for h in options])
    return entries


def _image_python(args: dict[str, str]) -> str:
    m = re.match(r"python:(\d+\.\d+)\.", args["PYTHON_IMAGE"])
    assert m, args["PYTHON_IMAGE"]
    return m.group(1)


def test_image_installs_every_dependency_from_the_hashed_lock(dockerfile):
    _, stages = dockerfile
    (build,) = [s for s in stages if s.name == "build"]
    installs = [i for i in build.instructions if i.cmd == "RUN" and "pip install" in i.args]
    assert len(installs) == 2, [i.args for i in installs]
    deps, package = installs
    flags = deps.args.split()
    assert "--require-hashes" in flags and "--no-deps" in flags, deps.args
    assert re.search(r"-r\s+requirements/prod\.lock\b", deps.args), deps.args
    # The package itself: no dependency resolution, and no build requirements fetched.
    assert package.args.split()[-1] == "." and "--no-deps" in package.args.split(), package.args
    assert "--no-build-isolation" in package.args.split(), package.args
    # The lock is in the build stage before it is installed (and survives .dockerignore).
    copies = [i for i in build.instructions if i.cmd == "COPY" and "requirements/prod.lock" in i.args]
    assert copies and copies[0].line < deps.line
    ignored = DOCKERIGNORE.read_text().split()
    assert "requirements" not in ignored and "requirements/prod.lock" not in ignored


def test_lock_pins_every_line_with_a_hash():
    entries = _lock()
    assert len(entries) > 10, sorted(entries)


def test_lock_covers_install_requires_for_the_image(dockerfile):
    """Every runtime requirement that applies to the image (Linux x86_64, the base image's
    Python) is locked at a version setup.cfg allows; so are the build requirements; none of
    the extras (demo, plot, dev) are in it."""
    args, _ = dockerfile
    env = {"python_version": _image_python(args), "platform_machine": "x86_64",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
    entries = _lock()
    applicable = [r for r in _install_requires() if r.marker is None or r.marker.evaluate(env)]
    assert applicable
    for req in applicable:
        name = canonicalize_name(req.name)
        assert name in entries, f"{req} is not in {LOCK.name}: run make lock"
        version, _ = entries[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"{LOCK.name} has {name}=={version}, setup.cfg wants {req}: run make lock")
    import tomllib

    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    build_in = [ln for ln in BUILD_IN.read_text().splitlines() if ln and not ln.startswith("#")]
    assert sorted(build) == sorted(build_in), f"{BUILD_IN.name} differs from pyproject.toml"
    for spec in build:
        req = Requirement(spec)
        assert canonicalize_name(req.name) in entries, f"build requirement {req} not locked"
        assert req.specifier.contains(entries[canonicalize_name(req.name)][0])
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    for extra in ("demo", "plot"):
        for line in cfg["options.extras_require"][extra].split():
            assert canonicalize_name(Requirement(line).name) not in entries, f"[{extra}] in the lock"


def test_lock_is_made_for_the_image_python(dockerfile):
    """`make lock` resolves for the Python the base image has, whatever Python runs it."""
    args, _ = dockerfile
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlock:", 1)[1].split("\n\n", 1)[0]
    assert f"--python-version {_image_python(args)} " in recipe, recipe
    assert "--generate-hashes" in recipe and "requirements/prod.lock" in makefile
    assert "setup.cfg" in recipe and "requirements/build.in" in recipe


def test_no_secrets_baked_in(dockerfile):
    args, stages = dockerfile
    for name in args:
        assert not SECRET_NAME.search(name), f"global ARG {name} looks like a secret"
    for stage in stages:
        for i in stage.instructions:
            if i.cmd in ("ARG", "ENV"):
                for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?:=|\s|$)", i.args):
                    assert not SECRET_NAME.search(name), f"line {i.line}: {i.cmd} {name}"
            if i.cmd in ("COPY", "ADD"):
                for src in i.args.split()[:-1]:
                    if src.startswith("--"):
                        continue
                    assert not SECRET_FILE.search(src), f"line {i.line}: copies {src}"
            if i.cmd == "ADD":
                assert "://" not in i.args, f"line {i.line}: ADD from a URL"
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", i.args), f"line {i.line}: URL credentials"


def test_copied_sources_exist(dockerfile):
    _, stages = dockerfile
    for stage in stages:
        for i in stage.instructions:
            if i.cmd != "COPY" or "--from=" in i.args or "${" in i.args:
                continue
            for src in [a for a in i.args.split()[:-1] if not a.startswith("--")]:
                assert (ROOT / src).exists(), f"line {i.line}: COPY source {src} does not exist"


def test_dockerignore_keeps_context_small_and_clean():
    patterns = [
        p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    for needed in (".git", ".venv", ".env", "**/*.pem", "**/*.key", "tests"):
        assert needed in patterns, f".dockerignore misses {needed}"
    for kept in ("stream_detector", "setup.cfg", "pyproject.toml", "README.md", "models",
                 "requirements"):
        assert kept not in patterns, f".dockerignore excludes {kept}, which the build needs"


# --- the model-only image (deploy/model-image) ------------------------------------------------

MODEL_DOCKERFILE = ROOT / "deploy" / "model-image" / "Dockerfile"


def test_model_image_is_pinned_non_root_and_runs_what_the_init_container_runs():
    """The model image's entrypoint is the command the `model` initContainer spells out in
    deploy/kubernetes/base/deployment.yaml, so either one can be used."""
    import yaml

    args, stages = parse(MODEL_DOCKERFILE.read_text())
    (stage,) = stages
    assert _is_pinned(_resolve(stage.base, args)), stage.base
    user = _effective(stages, stage, "USER")
    assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user.args), user
    entrypoint = _effective(stages, stage, "ENTRYPOINT")
    assert entrypoint is not None
    deployment = yaml.safe_load(
        (ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml").read_text())
    (init,) = [c for c in deployment["spec"]["template"]["spec"]["initContainers"]
               if c["name"] == "model"]
    assert json.loads(entrypoint.args) == init["command"]
    # It copies into the directory the detector mounts as its model.
    assert init["volumeMounts"][0]["mountPath"].rstrip("/") + "/" in init["command"][-1]
