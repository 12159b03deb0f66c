"""The runtime Dockerfiles cannot be built here (no Docker), so check what matters by reading
them: non-root numeric user, read-only-root friendly env, entrypoint, and that nothing but
the runtime and command-line packages (no operator code, no torch, no kopf) go in. Also build
the wheel from exactly what the Dockerfile copies, to prove the package builds without
operator/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "runtime" / "Dockerfile", "gpu": ROOT / "runtime" / "Dockerfile.gpu"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for k, args in stage:
        if k == "ENV":
            for token in args.split():
                key, _, value = token.partition("=")
                env[key] = value
    return env


@pytest.fixture(params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return DOCKERFILES[request.param]


def test_multi_stage_with_expected_bases() -> None:
    cpu = [a for k, a in instructions(DOCKERFILES["cpu"]) if k in ("FROM", "ARG")]
    assert "PYTHON_IMAGE=python:3.11-slim" in cpu
    assert sum(a.startswith("${PYTHON_IMAGE}") for a in cpu) == 2
    gpu = [a for k, a in instructions(DOCKERFILES["gpu"]) if k in ("FROM", "ARG")]
    base = next(a for a in gpu if a.startswith("CUDA_IMAGE="))
    assert base.startswith("CUDA_IMAGE=nvidia/cuda:12.") and "cudnn-runtime" in base
    assert sum(a.startswith("${CUDA_IMAGE}") for a in gpu) == 2


def test_final_stage_runs_as_numeric_non_root(dockerfile: Path) -> None:
    users = [a for k, a in final_stage(dockerfile) if k == "USER"]
    assert users, f"{dockerfile.name}: no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "runAsNonRoot needs a numeric non-zero UID"
    assert uid == "65532"


def test_entrypoint_cmd_and_port(dockerfile: Path) -> None:
    stage = dict(final_stage(dockerfile))
    assert json.loads(stage["ENTRYPOINT"]) == ["modelservice"]
    assert json.loads(stage["CMD"]) == ["serve", "/models/model.onnx"]
    assert stage["EXPOSE"] == "8080"


def test_read_only_root_friendly_env(dockerfile: Path) -> None:
    env = env_of(final_stage(dockerfile))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"
    assert env["PATH"].startswith("/opt/modelservice/bin")


def test_only_runtime_code_and_extras_go_in(dockerfile: Path) -> None:
    ins = instructions(dockerfile)
    text = dockerfile.read_text().lower()
    copies = [a for k, a in ins if k == "COPY" and not a.startswith("--from")]
    sources = [s for a in copies for s in a.split()[:-1]]
    assert sources, "expected COPY of the package sources"
    assert all(
        s
        in (
            "pyproject.toml",
            "README.md",
            "constraints.txt",
            "cli/modelservice_cli",
            "runtime/modelservice_runtime",
        )
        for s in sources
    )
    assert "operator" not in " ".join(sources)
    installs = [a for k, a in ins if k == "RUN" and "pip install" in a]
    assert len(installs) == 1
    # genai (onnxruntime-genai, which needs the CPU onnxruntime) only in the CPU image
    extra = "gpu" if dockerfile.name.endswith(".gpu") else "runtime,genai"
    # pinned to the versions the tests ran; s3 for the init container's s3:// fetches
    assert f'-c constraints.txt ".[{extra},s3]"' in installs[0]
    # the build fails if torch or kopf (or the wrong onnxruntime flavour) slipped in
    assert "! /opt/modelservice/bin/pip show torch kopf" in installs[0]
    for banned in ("[export]", "[operator]", "[dev]", "pip install torch", "pip install kopf"):
        assert banned not in text
    # the final stage only copies the venv from the build stage
    final_copies = [a for k, a in final_stage(dockerfile) if k == "COPY"]
    assert final_copies == ["--from=build /opt/modelservice /opt/modelservice"]


def test_dockerignore_allow_lists_runtime_only(dockerfile: Path) -> None:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    assert rules[0] == "*"
    assert {r for r in rules if r.startswith("!")} == {
        "!pyproject.toml",
        "!README.md",
        "!constraints.txt",
        "!cli/modelservice_cli",
        "!runtime/modelservice_runtime",
    }


@pytest.mark.slow
def test_wheel_builds_from_the_docker_context_alone(tmp_path: Path) -> None:
    """What the Dockerfile copies is enough to build, and the wheel has no operator code."""
    ctx = tmp_path / "ctx"
    (ctx / "runtime").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", ctx)
    readme = ROOT / "README.md"
    if readme.exists():
        shutil.copy(readme, ctx)
    else:  # the lead writes README.md; the build only needs it to exist
        (ctx / "README.md").write_text("# ModelService\n")
    for package in ("cli/modelservice_cli", "runtime/modelservice_runtime"):
        shutil.copytree(
            ROOT / package, ctx / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("-q", "-w", str(wheels), str(ctx)),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = wheels.glob("modelservice-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "modelservice_cli/main.py" in names
    assert "modelservice_runtime/fetch/command.py" in names
    assert not [n for n in names if n.startswith("modelservice_operator")]
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    runtime_reqs = [
        line
        for line in text.splitlines()
        if line.startswith("Requires-Dist:") and "runtime" in line
    ]
    assert runtime_reqs and not any("torch" in r or "kopf" in r for r in runtime_reqs)
