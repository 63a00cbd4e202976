"""Start a throwaway PostgreSQL server (Debian's package) in a temporary directory.

Used by the test fixture (tests/support/postgres.py) and by the benchmarks (bench/, through
hack/loader.py). Plain stdlib, importable by path. The server runs as a non-root user: the
current user, or, when running as root, the `postgres` system user the Debian package
creates (or `$KUBEMETER_PG_USER`). It listens on 127.0.0.1 on a free port and on a unix
socket in the temporary directory, with trust authentication.

    python hack/pgtmp.py            # start one, print its URL, stop it on Ctrl-C
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL server binaries not found (looked for initdb/pg_ctl in $KUBEMETER_PG_BIN, "
    "/usr/lib/postgresql/*/bin and $PATH). Install them: `apt-get install -y postgresql`, "
    "or point KUBEMETER_TEST_POSTGRES_URL at an existing server "
    "(postgresql+psycopg://user@host:port/dbname)."
)


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL could not be found or started."""


def find_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres (newest version first)."""
    candidates: list[Path] = []
    if os.environ.get("KUBEMETER_PG_BIN"):
        candidates.append(Path(os.environ["KUBEMETER_PG_BIN"]))

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version)][
        ::-1
    ]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for cand in candidates:
        if (cand / "initdb").exists() and (cand / "pg_ctl").exists():
            return cand
    raise PostgresUnavailableError(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """A running throwaway server. `url` is a SQLAlchemy URL to its `postgres` database."""

    bin_dir: Path
    base_dir: Path
    port: int
    user: str | None  # OS user the server runs as (None: the current user)
    superuser: str = "postgres"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return _run_as(self.user, args, timeout)

    def stop(self) -> None:
        if self.data_dir.exists():
            self._run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                 "-w", "stop"],
            )  # fmt: skip
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _run_as(user: str | None, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        user=user,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        cwd="/",
    )


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    name = os.environ.get("KUBEMETER_PG_USER", "postgres")
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
    return name


def start(*, durable: bool = False, base_dir: str | None = None) -> PgServer:
    """initdb + start a server; `durable=False` turns off fsync (fine for tests)."""
    bin_dir = find_bin_dir()
    user = _server_user()
    base = Path(tempfile.mkdtemp(prefix="kubemeter-pg-", dir=base_dir))
    server = PgServer(bin_dir=bin_dir, base_dir=base, port=free_port(), user=user)
    server.socket_dir.mkdir()
    if user is not None:
        pw = pwd.getpwnam(user)
        for path in (base, server.socket_dir):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(base, 0o755)
    init = server._run(
        [str(bin_dir / "initdb"), "-D", str(server.data_dir), "-A", "trust", "-U", "postgres",
         "-E", "UTF8", "--locale=C", "--no-sync"],
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise PostgresUnavailableError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    options = [
        f"-p {server.port}",
        "-c listen_addresses=127.0.0.1",
        f"-c unix_socket_directories={server.socket_dir}",
        "-c max_connections=200",
        "-c shared_buffers=128MB",
    ]
    if not durable:
        options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    log = base / "postgres.log"
    ctl = server._run(
        [str(bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-l", str(log),
         "-o", " ".join(options), "-w", "-t", "60", "start"],
    )  # fmt: skip
    if ctl.returncode != 0:
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise PostgresUnavailableError(f"pg_ctl start failed:\n{ctl.stdout}\n{ctl.stderr}\n{text}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise PostgresUnavailableError("PostgreSQL did not start listening within 30 s")


@contextlib.contextmanager
def url_or_start(url: str | None, *, durable: bool = False) -> Iterator[str]:
    """`url` when one is given (nothing is started); otherwise the URL of a throwaway server
    started here and stopped when the block ends."""
    if url:
        yield url
        return
    server = start(durable=durable)
    try:
        yield server.url()
    finally:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    srv = start(durable="--durable" in sys.argv)
    print(srv.url(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
