"""A throwaway PostgreSQL cluster for tests: initdb into a temporary folder, listening only on a unix
socket (no TCP), trust authentication, C collation; stopped and deleted on exit.

    python tools/pg_throwaway.py            # starts one, prints its URL, waits for Ctrl-C
Tests use `start()` / `stop()` (tests/conftest.py), or the URL in $MASKKIT_TEST_PG_URL when set.
Needs Debian's `postgresql` package (apt-get install postgresql). As root, the server runs as the
`postgres` user the package creates (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class Cluster:
    def __init__(self, base: Path, user: str | None):
        self.base = base
        self.data = base / "data"
        self.socket = base / "socket"
        self.user = user
        self.port = 5432

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@/postgres?host={self.socket}&port={self.port}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True)


def start() -> Cluster:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            raise RuntimeError("running as root and there is no 'postgres' user to run the server as")
    base = Path(tempfile.mkdtemp(prefix="maskkit-pg-"))
    cluster = Cluster(base, user)
    cluster.socket.mkdir()
    if user:
        shutil.chown(base, user)
        shutil.chown(cluster.socket, user)
        os.chmod(base, 0o755)
    cluster.run(initdb, "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "--locale=C", "-E", "UTF8")
    options = f"-c listen_addresses='' -c unix_socket_directories={cluster.socket} -c port={cluster.port} " \
              "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
    cluster.run(pg_ctl, "-D", str(cluster.data), "-o", options, "-l", str(base / "server.log"), "-w", "start")
    return cluster


def stop(cluster: Cluster) -> None:
    pg_ctl = _bin("pg_ctl")
    cluster.run(pg_ctl, "-D", str(cluster.data), "-m", "immediate", "stop", check=False)
    shutil.rmtree(cluster.base, ignore_errors=True)


def create_database(admin_url: str, name: str, template: str = "template0") -> str:
    """A fresh database on the server of admin_url, a copy of `template` (default: empty); returns its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}" ENCODING \'UTF8\' LC_COLLATE \'C\' LC_CTYPE \'C\''))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


if __name__ == "__main__":
    c = start()
    print(c.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop(c)
        sys.exit(0)
