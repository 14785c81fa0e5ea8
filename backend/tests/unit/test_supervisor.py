"""How the supervisor of several workers says a worker ended."""

import pytest

from app.__main__ import _how_it_ended


@pytest.mark.parametrize(
    ("exitcode", "said"),
    [
        (-9, "killed by SIGKILL"),  # the OOM killer's
        (-40, "killed by signal 40"),  # a real-time signal: no name (a review)
        (3, "exit status 3"),
    ],
)
def test_a_workers_end_is_said_with_its_cause(exitcode: int, said: str) -> None:
    assert _how_it_ended(exitcode) == said
