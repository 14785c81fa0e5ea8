"""The Task API. Before anything imports prometheus_client, which reads
PROMETHEUS_MULTIPROC_DIR as it is imported: a blank one is unset, as every
setting (it took "" for a directory, and every scrape was a 500), and one that
is not a writable directory stops start-up with one line (it was a traceback)."""

import os


def _metrics_directory() -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory is None:
        return
    if not directory.strip():
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    elif not (os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)):
        raise SystemExit(
            f"configuration error: PROMETHEUS_MULTIPROC_DIR: {directory} is not a "
            "directory this process can write to (create it, or unset the variable)"
        )


_metrics_directory()
