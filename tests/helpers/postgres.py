"""A real throwaway PostgreSQL 15 on loopback for the tests (Debian's server binaries).

:class:`PostgresServer` runs ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/15/bin`` in a
fresh folder under the system temp directory, on a free loopback port, with password
(SCRAM) authentication for TCP so that URLs carry a real password. Run as root (here and on
CI), the server runs as the ``postgres`` user (``runuser``), which owns the folder. Each test
gets its own database (:meth:`PostgresServer.new_database`: ``CREATE DATABASE``).

:func:`postgres_missing` says why no server can be started (the binaries are absent); the
fixture skips with that reason, loudly, and only then.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("TRIAGE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PASSWORD = "s3cret-test-pw"  # a throwaway server's password
USER = "triage"


def postgres_missing() -> str:
    """Why a PostgreSQL server cannot be started here ("" when it can)."""
    missing = [n for n in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / n).exists()]
    if missing:
        return (
            f"PostgreSQL 15 server binaries {missing} are not installed in {PG_BIN} "
            "(apt-get install postgresql-15): the PostgreSQL worklist tests cannot run"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' user to run the server as"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, listening on ``127.0.0.1:port``.

    ``durable=False`` turns ``fsync`` off (tests: the server itself is never killed, only its
    clients); benchmarks keep the defaults (fsync on, synchronous_commit on).
    """

    def __init__(self, durable: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="triage-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self.durable = durable
        self._names = itertools.count(1)
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    def _run(self, *cmd: str, timeout: float = 120.0) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        done = subprocess.run(
            [*prefix, *cmd], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({done.returncode}):\n{done.stderr}")

    def start(self) -> PostgresServer:
        """initdb, then start the server on a free port; returns self once it accepts."""
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8",
            "--locale=C.UTF-8",
        )  # fmt: skip
        pwfile.unlink()
        settings = [
            "listen_addresses=127.0.0.1", f"unix_socket_directories={self.root}",
            "max_connections=200", "shared_buffers=64MB",
        ]  # fmt: skip
        if not self.durable:
            settings += ["fsync=off", "full_page_writes=off"]
        for attempt in range(5):
            self.port = _free_port()
            options = " ".join(f"-c {s}" for s in [*settings, f"port={self.port}"])
            try:
                self._run(
                    str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                    str(self.root / "server.log"), "-o", options, "-w", "-t", "60", "start",
                )  # fmt: skip
                return self
            except RuntimeError:
                if attempt == 4:
                    log = self.root / "server.log"
                    raise RuntimeError(
                        "PostgreSQL did not start:\n" + (log.read_text() if log.exists() else "")
                    ) from None
                time.sleep(0.2)
        return self

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        """``postgresql://triage:PASSWORD@127.0.0.1:PORT/DATABASE``."""
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                          "stop")  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.helpers.postgres [--durable] -- CMD...``: run CMD with
    ``TRIAGE_WORKLIST__URL`` naming a fresh database on a throwaway server, then stop it (how
    the README's PostgreSQL figures are produced; ``--durable`` keeps fsync on)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tests.helpers.postgres")
    parser.add_argument("--durable", action="store_true", help="fsync on (benchmarks)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    reason = postgres_missing()
    if reason or not command:
        print(reason or "give a command after --", file=sys.stderr)
        return 2
    server = PostgresServer(durable=args.durable).start()
    try:
        env = {**os.environ, "TRIAGE_WORKLIST__URL": server.new_database()}
        return subprocess.run(command, env=env, check=False).returncode
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
