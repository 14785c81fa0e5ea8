"""The Task API. Before anything imports prometheus_client, which reads
PROMETHEUS_MULTIPROC_DIR as it is imported: a blank one is unset, as every
setting (it took "" for a directory, and every scrape was a 500), and one that
is not a directory this process can write to stops start-up with one line (it
was a traceback)."""

import os
import sys
import tempfile


def _metrics_directory() -> None:
    # prometheus_client still takes the old lower-case name, and copies it over.
    names = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROC_DIR".lower())
    for name in names:
        if not os.environ.get(name, "-").strip():
            del os.environ[name]
    directory = next((os.environ[name] for name in names if name in os.environ), None)
    if directory is None:
        return
    try:  # as prometheus_client will: `os.access` passes /sys for root
        tempfile.TemporaryFile(dir=directory).close()
    except OSError:
        sys.stderr.write(
            f"configuration error: PROMETHEUS_MULTIPROC_DIR: {directory} is not a "
            "directory this process can write to (create it, or unset the variable)\n"
        )
        raise SystemExit(3) from None  # config.STARTUP_FAILURE, not imported yet


_metrics_directory()
