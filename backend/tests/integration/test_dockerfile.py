"""The Dockerfile's commands, run here as the image would run them (no Docker engine
needed): HEALTHCHECK asks the port PORT names, and CMD starts one worker per core, at
most 4 unless WEB_CONCURRENCY says otherwise (README, "Sizing connections")."""

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import PROJECT_ROOT
from tests.server import free_port, running_server

DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text().replace("\\\n", " ")


def _exec_form(instruction: str) -> list[str]:
    """The JSON array after `CMD` in the line starting with `instruction`."""
    for line in DOCKERFILE.splitlines():
        if line.startswith(instruction + " "):
            command: list[str] = json.loads(line[line.index("CMD [") + 4 :])
            return command
    raise AssertionError(f"no {instruction} in the Dockerfile")


@pytest.fixture(scope="module")
def server(database_url: str, engine: object) -> Iterator[str]:
    with running_server(database_url) as base_url:
        yield base_url


def _healthcheck(port: int) -> int:
    python, *args = _exec_form("HEALTHCHECK")
    assert python == "python"
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run([sys.executable, *args], env=env, check=False).returncode


def test_healthcheck_asks_the_port_that_port_names(server: str) -> None:
    assert _healthcheck(int(server.rsplit(":", 1)[1])) == 0
    assert _healthcheck(free_port()) != 0  # nothing listens there


def _workers(tmp_path: Path, cores: int, **env: str) -> str:
    """CMD's shell line, with `nproc` and `python` replaced by stand-ins that report
    the core count given and the WEB_CONCURRENCY the server would get."""
    for name, body in (
        ("nproc", f"echo {cores}"),
        ("python", 'echo "$WEB_CONCURRENCY"'),
    ):
        tool = tmp_path / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    shell, flag, line = _exec_form("CMD")
    assert (shell, flag) == ("sh", "-c")
    environment = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"}
    environment.update(env, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [shell, flag, line], env=environment, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("cores", "workers"), [(1, "1"), (2, "2"), (4, "4"), (16, "4")]
)
def test_cmd_starts_one_worker_per_core_at_most_four(
    tmp_path: Path, cores: int, workers: str
) -> None:
    assert _workers(tmp_path, cores) == workers


def test_cmd_takes_web_concurrency_when_set(tmp_path: Path) -> None:
    assert _workers(tmp_path, 16, WEB_CONCURRENCY="8") == "8"
