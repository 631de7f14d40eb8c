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
