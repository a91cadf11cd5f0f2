"""A real PostgreSQL server for the tests, started from Debian's binaries on 127.0.0.1 and gone with the tests.

`make postgres` installs the binaries where missing (as `make browser` does Chromium). The server runs as
a child of the test process with a parent-death signal, so it stops even when pytest is killed.
FINE_TUNE_DAG_SKIP_POSTGRES_TESTS=1 skips these tests on purpose; without it, a missing server fails.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fine_tune_dag_tests.browser import free_port

SKIP_VARIABLE = "FINE_TUNE_DAG_SKIP_POSTGRES_TESTS"
USER = "fine_tune_dag"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database: each test starts from nothing and sees no other test's rows."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql("postgres", f"CREATE DATABASE {name}")
        return name

    def psql(self, database: str, sql: str) -> str:
        return subprocess.run(
            [_binary("psql"), "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database, "-Atc", sql],
            check=True,
            capture_output=True,
            text=True,
        ).stdout


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    if path := shutil.which(name):
        return path
    raise FileNotFoundError(
        f"PostgreSQL's {name} not found: run `make postgres` (Debian: apt-get install postgresql), "
        f"or set {SKIP_VARIABLE}=1 to skip the PostgreSQL tests"
    )


def _server_account() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: as root, run it as Debian's `postgres` account."""
    if os.geteuid() != 0:
        return None
    account = pwd.getpwnam("postgres")
    return account.pw_uid, account.pw_gid


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_postgres(folder: Path) -> tuple[PostgresServer, subprocess.Popen]:
    account = _server_account()
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if account:
        os.chown(folder, *account)
    as_server = {"user": account[0], "group": account[1]} if account else {}
    subprocess.run(
        [_binary("initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--no-sync"],
        check=True,
        capture_output=True,
        **as_server,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            _binary("postgres"),
            "-D", str(data),
            "-p", str(port),
            "-k", str(folder),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",
            "-c", "max_connections=200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "server.log", "wb"),
        preexec_fn=_die_with_parent,
        **as_server,
    )  # fmt: skip
    server = PostgresServer("127.0.0.1", port, USER)
    deadline = time.monotonic() + 60
    while True:
        try:
            server.psql("postgres", "SELECT 1")
            return server, process
        except subprocess.CalledProcessError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"PostgreSQL did not start: {(folder / 'server.log').read_text()[-2000:]}") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1: the PostgreSQL tests are skipped on purpose")
    # not under pytest's temporary folder: that one is private to this user, and the server may run as another
    folder = Path(tempfile.mkdtemp(prefix="fine-tune-dag-postgres-"))
    os.chmod(folder, 0o755)
    server, process = start_postgres(folder / "cluster")
    try:
        yield server
    finally:
        process.send_signal(signal.SIGINT)  # fast shutdown
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)
