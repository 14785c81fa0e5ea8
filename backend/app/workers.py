"""What `python -m app`'s supervisor of several workers and its workers share."""

import ctypes
import os
import signal
import sys

# Set by the supervisor for its workers: its process id.
SUPERVISOR_PID = "APP_SUPERVISOR_PID"
# Linux's prctl option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def die_with_supervisor() -> None:
    """A worker of `python -m app` stops gracefully (SIGTERM) when its supervisor
    dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG): orphaned, the workers went
    on serving, held the port, and the service could not start again until they
    were killed by hand (a trial). Nothing elsewhere: a lone server's parent is
    a shell or an init system, whose end must not stop it."""
    supervisor = os.environ.get(SUPERVISOR_PID)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):  # it died before this worker asked
        os.kill(os.getpid(), signal.SIGTERM)
