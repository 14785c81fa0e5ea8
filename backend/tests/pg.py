"""A private PostgreSQL server for fault tests: one we may stop, restart, or make
require TLS, without touching the server every other test uses. It uses the
machine's PostgreSQL binaries (Debian's postgresql package)."""

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg2

from tests.server import free_port
from tests.sessions import wait_until


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql")
    return Path(found[-1]).parent


class PrivatePostgres:
    def __init__(self, *, tls: bool = False) -> None:
        self.bindir = _bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="taskapi-pg-"))
        self.data = self.root / "data"
        self.tls = tls
        # PostgreSQL refuses to run as root: run it as the postgres user then.
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            shutil.chown(self.root, user=self._user)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        )
        if tls:
            self._make_certificate()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._user:
            command = ["runuser", "-u", self._user, "--", *command]
        subprocess.run(command, check=True, capture_output=True)

    def _make_certificate(self) -> None:
        key, cert = self.data / "server.key", self.data / "server.crt"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-subj",
                "/CN=127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
        key.chmod(0o600)
        if self._user:
            uid = pwd.getpwnam(self._user).pw_uid
            for path in (key, cert):
                os.chown(path, uid, -1)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 reject\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
            )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "server.log")
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", log, "-w", "-o", options, "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def crash(self) -> None:
        """Stop as a crash does: no checkpoint, what is not on disk is lost."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def kill_a_backend(self) -> None:
        """SIGKILL one backend, as the OOM killer does, and return once PostgreSQL
        has ended its other sessions to recover: a write sent before that could
        still land before the crash (CI saw it)."""
        with contextlib.closing(psycopg2.connect(self.url())) as witness:
            with psycopg2.connect(self.url()) as victim:
                os.kill(victim.get_backend_pid(), signal.SIGKILL)
            wait_until("PostgreSQL ends its sessions", lambda: not _answers(witness))

    def configure(self, **settings: str) -> None:
        """postgresql.conf settings, taken at the next start."""
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = '{value}'\n" for name, value in settings.items())

    def url(self, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres" + (
            f"?{params}" if params else ""
        )

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _answers(connection: psycopg2.extensions.connection) -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("select 1")
    except psycopg2.Error:
        return False
    return True
