import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args, timeout=120, **kw):
    """Run `python -m adamlab.cli ...` in a subprocess, like a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "adamlab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=kw.get("cwd", ROOT))


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server on 127.0.0.1 (tests/lab/pg.py). Without the server's binaries the test
    is skipped on a developer's machine and fails in CI (CI=true): .ci/run installs them."""
    from .pg import Cluster, find_bin

    bindir = find_bin()
    if bindir is None:
        msg = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster, request):
    """A fresh database on the throwaway server; its URL carries a password (which must never be shown)."""
    import re
    import uuid

    name = re.sub(r"\W", "_", request.node.name)[:40].lower() + "_" + uuid.uuid4().hex[:6]
    return pg_cluster.create_db(name)
