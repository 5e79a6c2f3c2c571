"""A real PostgreSQL server for a test: initdb in a temporary directory, pg_ctl on a free port.

Debian's ``postgresql`` package puts the server binaries under ``/usr/lib/postgresql/<v>/bin``
(not on PATH); ``.ci/run`` installs the package. The server refuses to run as root, so under
root it runs as the package's ``postgres`` user. Nothing relies on a system service.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def server_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest version first), or None."""
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(bindir, "initdb").is_file() and Path(bindir, "pg_ctl").is_file():
            return Path(bindir)
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    return None


def require_server() -> Path:
    bindir = server_binaries()
    if bindir is not None:
        return bindir
    if os.environ.get("CI"):
        pytest.fail("CI is set but PostgreSQL's server binaries are missing: .ci/run must "
                    "`apt-get install -y postgresql`")
    pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
                "apt-get install postgresql (CI installs it and runs this test)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_url() -> Iterator[str]:
    """Start a throw-away server; yield its SQLAlchemy URL; stop it and remove its files."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'msatune[postgres]'")
    bindir = require_server()
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="msat-pg-", dir="/tmp"))
    data, log = root / "data", root / "server.log"
    try:  # a failed initdb or start leaves no directory and no half-started server behind
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        port = _free_port()
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
                        "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=120)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
