import os
import subprocess
import sys

import pytest


def run_python(
    code: str, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter of this environment."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, env=full_env, timeout=timeout
    )


@pytest.fixture
def fresh_python():
    return run_python
