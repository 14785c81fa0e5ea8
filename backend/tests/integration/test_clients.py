"""CI check: the OpenAPI document generates clients that work. From the live
/openapi.json of a running server (auth on), @hey-api/openapi-ts generates a
TypeScript client, which `tsc --noEmit` type-checks strictly with a round trip
written against it (backend/tests/clients/roundtrip.ts), then Node runs that round
trip; openapi-python-client generates a Python client, against which `mypy --strict`
checks roundtrip.py before it runs the same journey. The generators are pinned: npm's
in backend/tests/clients/package-lock.json, openapi-python-client in
requirements-dev.txt."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import new_user_id
from tests.jwt_helpers import SECRET, hs_token
from tests.server import BACKEND, running_server

CLIENTS = BACKEND / "tests" / "clients"
NODE_BIN = CLIENTS / "node_modules" / ".bin"
VENV_BIN = Path(sys.executable).parent


def _run(command: list[str | Path], cwd: Path, **env: str) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command[0]} failed:\n{output}"
    return output


@pytest.fixture(scope="module")
def node_tools() -> Path:
    """`npm ci` from the committed lock file, again only when the lock changes."""
    npm = shutil.which("npm")
    assert npm, "the generated-client check needs Node.js 20.19+ with npm"
    lock = (CLIENTS / "package-lock.json").read_bytes()
    stamp = CLIENTS / "node_modules" / f".ci-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not stamp.exists():
        _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], CLIENTS)
        stamp.touch()
    return NODE_BIN


@pytest.fixture(scope="module")
def api(database_url: str, engine: object) -> Iterator[str]:
    with running_server(database_url, BETTER_AUTH_SECRET=SECRET) as base_url:
        yield base_url


def test_typescript_client_type_checks_and_round_trips(
    node_tools: Path, api: str, tmp_path: Path
) -> None:
    for name in ("roundtrip.ts", "tsconfig.json"):
        shutil.copy(CLIENTS / name, tmp_path / name)
    user = new_user_id()
    constants = {"BASE_URL": api, "TOKEN": hs_token(user), "USER_ID": user}
    (tmp_path / "config.ts").write_text(
        "".join(f"export const {k} = {json.dumps(v)};\n" for k, v in constants.items())
    )
    generated = _run(
        [
            node_tools / "openapi-ts",
            "--input",
            f"{api}/openapi.json",
            "--output",
            tmp_path / "client",
        ],
        CLIENTS,
    )
    assert "warn" not in generated.lower(), generated
    _run([node_tools / "tsc", "--noEmit", "-p", tmp_path / "tsconfig.json"], CLIENTS)
    _run([node_tools / "tsc", "-p", tmp_path / "tsconfig.json"], CLIENTS)
    output = _run(["node", tmp_path / "dist" / "roundtrip.js"], tmp_path)
    assert "typescript client round trip: ok" in output


def test_python_client_round_trips(api: str, tmp_path: Path) -> None:
    generated = _run(
        [
            VENV_BIN / "openapi-python-client",
            "generate",
            "--url",
            f"{api}/openapi.json",
            "--meta",
            "none",
        ],
        tmp_path,
        # it formats what it generates with ruff, which it looks for on PATH
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    assert "warning" not in generated.lower(), generated
    # Our use of the client, typed strictly against it (its own code is not ours).
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\nfollow_imports = silent\n")
    _run(
        [VENV_BIN / "mypy", "--config-file", config, CLIENTS / "roundtrip.py"],
        tmp_path,
        MYPYPATH=str(tmp_path),
    )
    user = new_user_id()
    output = _run(
        [sys.executable, CLIENTS / "roundtrip.py", api, hs_token(user), user],
        tmp_path,
        PYTHONPATH=str(tmp_path),
    )
    assert "python client round trip: ok" in output
