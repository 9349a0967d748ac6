"""The Dockerfile cannot be built here, so its parts are checked against the project."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str, str]]:
    """(stage, instruction, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out, stage = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        out.append((stage, op.upper(), rest.strip()))
    return out


def arg_defaults() -> dict[str, str]:
    """Default values of every ARG."""
    return dict(rest.split("=", 1) for _, op, rest in instructions() if op == "ARG" and "=" in rest)


def test_every_copied_path_exists() -> None:
    """Each COPY source taken from the build context exists in the repository."""
    defaults = arg_defaults()
    copies = [rest for _, op, rest in instructions() if op == "COPY" and "--from" not in rest]
    assert copies
    for rest in copies:
        *sources, _dest = shlex.split(rest)
        for source in sources:
            resolved = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], source)
            assert (ROOT / resolved).exists(), f"COPY {source} -> {resolved} does not exist"


def test_runtime_image_has_no_torch_and_runs_as_non_root() -> None:
    """The runtime stages install the wheel with the postgres extra only (psycopg, for a
    shared PostgreSQL worklist) and switch to a non-root user."""
    for stage in ("runtime", "gpu"):
        ops = [(op, rest) for s, op, rest in instructions() if s == stage]
        assert ("USER", "triage") in ops
        installs = " ".join(rest for op, rest in ops if op == "RUN")
        assert "torch" not in installs and "[train" not in installs
        assert "[postgres]" in installs and "[tools" not in installs
        assert any(op == "HEALTHCHECK" for op, _ in ops)
        assert ("EXPOSE", "50051") in ops


@pytest.mark.slow
def test_serving_wheel_holds_only_the_serving_packages(tmp_path: Path) -> None:
    """The wheel built from what the build stage copies holds service/ and triage_common/ only,
    and requires neither torch, matplotlib, rich nor anything of the tools."""
    build = [rest for s, op, rest in instructions() if s == "build" and op == "COPY"]
    context = tmp_path / "context"
    context.mkdir()
    for rest in build:
        *sources, dest = shlex.split(rest)
        for source in sources:
            target = context / dest if dest not in ("./", ".") else context / source
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, context / Path(source).name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith("/METADATA"))
    packages = {n.split("/")[0] for n in names if n.endswith(".py")}
    assert packages == {"service", "triage_common"}
    required = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    banned = ("torch", "matplotlib", "rich", "onnx>", "onnxscript")
    assert required and not [r for r in required if r.startswith(banned)]


def _env(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for s, op, rest in instructions():
        if s == stage and op == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


@pytest.mark.slow
def test_entrypoint_and_healthcheck_run_in_the_project_venv(
    tmp_path: Path, bundle_path: Path
) -> None:
    """The image's ENTRYPOINT serves a bundle with the image's environment, and its
    HEALTHCHECK command reports it healthy (port moved to a free one for the test)."""
    ops = {op: rest for s, op, rest in instructions() if s == "runtime"}
    entrypoint = json.loads(ops["ENTRYPOINT"])
    health = json.loads(ops["HEALTHCHECK"].split("CMD", 1)[1])
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update({k: v for k, v in _env("runtime").items() if k.startswith("TRIAGE_")})
    env.update(
        TRIAGE_BUNDLE=str(bundle_path),
        TRIAGE_SERVER__HOST="127.0.0.1",
        TRIAGE_SERVER__PORT="0",
        TRIAGE_WORKLIST__PATH=str(tmp_path / "worklist.db"),
    )
    proc = subprocess.Popen(
        [str(bin_dir / entrypoint[0]), *entrypoint[1:]], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "listening on" in line:
                port = int(line.rsplit(":", 1)[1])
        assert port is not None, "the entrypoint did not start listening"
        check = [str(bin_dir / health[0]), *(a.replace("50051", str(port)) for a in health[1:])]
        for _ in range(120):
            done = subprocess.run(check, capture_output=True, text=True, env=env)
            if done.returncode == 0:
                break
            time.sleep(0.5)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SERVING" in done.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
