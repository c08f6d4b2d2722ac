"""The Dockerfile, read (no container engine here): what it copies exists, its health check is
a real `dtq` command, and the build installs the pinned versions of constraints.txt."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dtq.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name] = version
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_copied_files_exist() -> None:
    copies = [shlex.split(args)[:-1] for word, args in instructions() if word == "COPY"]
    sources = [source for sources in copies for source in sources]
    assert "constraints.txt" in sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_health_check_is_dtq_healthcheck() -> None:
    (check,) = [args for word, args in instructions() if word == "HEALTHCHECK"]
    options, _, command = check.partition("CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["dtq", "healthcheck"]
    build_parser().parse_args(argv[1:])  # a command and flags the CLI has
    timeout_s = float(argv[argv.index("--timeout") + 1])
    docker_timeout = re.search(r"--timeout=(\d+)s", options)
    assert docker_timeout is not None and timeout_s < float(docker_timeout.group(1))


def test_build_installs_with_the_constraints() -> None:
    runs = [args for word, args in instructions() if word == "RUN"]
    assert any("pip install" in run and "-c constraints.txt" in run for run in runs)


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins()
    for line in project["dependencies"]:
        requirement = Requirement(line)
        version = pinned.get(canonical(requirement.name))
        assert version is not None, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(version), (requirement, version)


def test_ci_installed_the_pinned_versions() -> None:
    if os.environ.get("CI", "").lower() != "true":
        pytest.skip("only CI installs with -c constraints.txt (.ci/run)")
    for name, version in pins().items():
        assert importlib.metadata.version(name) == version, name
