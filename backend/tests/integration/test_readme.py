"""The README's curl examples, run as written (bash, real curl) against a real server
on a fresh database: every command answers the status its comment promises, and the
examples leave the state they describe."""

import re
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from app.config import PROJECT_ROOT
from tests.conftest import fresh_database
from tests.server import running_server

README = (PROJECT_ROOT / "README.md").read_text()
SECTION = README[README.index("## Using it with curl") : README.index("A task:")]
BLOCKS = re.findall(r"```sh\n(.*?)```", SECTION, flags=re.DOTALL)
# Each curl call prints its status on stderr, after what it prints on stdout.
PRELUDE = """set -eu -o pipefail
curl() { command curl -sS -w '%{stderr}%{http_code}\\n' "$@"; }
"""
EXPECTED = [
    201,  # E1 create: task 1
    200,  # E2 list
    200,  # E3 get
    200,  # E4 replace
    200,  # E7 patch
    200,  # E6 toggle
    204,  # E5 delete
    404,  # ... again
    200,  # E8 health
    201,  # create with an Idempotency-Key: task 2
    201,  # the same again: the first response
    200,  # HEAD for the ETag
    304,  # If-None-Match with it
    200,  # If-Match with it: changed
    412,  # the same, now stale, If-Match
    200,  # E10 first sync
    200,  # ... again, for its token
    200,  # E10 changes since that token
    200,  # E11 batch
    200,  # E12 clear completed
]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Ids start at 1, as the examples assume."""
    with fresh_database() as url, running_server(url) as base_url:
        yield base_url


def test_readme_curl_examples_answer_as_documented(server: str) -> None:
    assert len(BLOCKS) == 3, "the curl section has changed shape"
    script = PRELUDE + "\n".join(BLOCKS).replace("http://127.0.0.1:8000", server)
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    statuses = [int(line) for line in result.stderr.split() if line.isdigit()]
    assert statuses == EXPECTED, result.stdout
    assert result.stdout.rstrip().endswith('{"deleted":1}'), result.stdout
    tasks = httpx.get(f"{server}/api/alice/tasks").json()
    assert [(t["id"], t["title"]) for t in tasks] == [(2, "Pay the rent")]
