"""The original ``torchopt`` distribution beside ``torchopt-core`` is reported (issue #18, item 6).

Upstream (TorchOpt 0.7.3) is the PyPI distribution ``torchopt``; it installs the same import
package ``torchopt`` as ``torchopt-core``, and pip mixes the files of the two silently. Nothing is
really installed here: a fake ``torchopt-0.7.3.dist-info`` directory is put on ``sys.path`` of a
subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchopt import _conflict

FIX = ('pip uninstall torchopt', 'pip install --force-reinstall torchopt-core')


@pytest.fixture
def fake_upstream(tmp_path: Path) -> Path:
    """A directory holding the metadata of an installed ``torchopt`` 0.7.3 (and no code)."""
    dist_info = tmp_path / 'torchopt-0.7.3.dist-info'
    dist_info.mkdir()
    (dist_info / 'METADATA').write_text('Metadata-Version: 2.1\nName: torchopt\nVersion: 0.7.3\n')
    (dist_info / 'top_level.txt').write_text('torchopt\n')
    return tmp_path


def _run(args: list[str], extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(extra_path), env.get('PYTHONPATH')]))
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=300
    )


_IMPORT_TWICE = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import torchopt
    from torchopt import _conflict
    _conflict.warn_if_conflicting()  # a second call does not warn again
rows = [(w.category.__name__, str(w.message), w.filename) for w in caught
        if 'torchopt-core' in str(w.message)]
print(json.dumps(rows))
"""


def test_import_warns_once_naming_both_distributions_and_the_fix(fake_upstream: Path) -> None:
    """``import torchopt`` warns once (UserWarning) when the ``torchopt`` distribution is there.

    The message names both distributions with their versions and the fix; the warning points
    at the code that imports torchopt.
    """
    out = _run(['-c', _IMPORT_TWICE], fake_upstream)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 1, rows
    category, message, filename = rows[0]
    assert category == 'UserWarning'
    assert "'torchopt' distribution (0.7.3)" in message and "'torchopt-core' (" in message
    for command in FIX:
        assert command in message
    assert filename == '<string>'


def test_python_m_torchopt_reports_the_conflict(fake_upstream: Path) -> None:
    """``python -m torchopt`` prints the conflict right under its version line."""
    out = _run(['-m', 'torchopt'], fake_upstream)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith('torchopt-core ')
    assert lines[1].startswith("WARNING: Both the 'torchopt' distribution (0.7.3)")
    assert all(command in lines[1] for command in FIX)
    assert out.stderr.count('UserWarning') == 1  # the import-time warning, once


def test_no_warning_without_the_upstream_distribution() -> None:
    """The normal environment (torchopt-core alone) imports torchopt without any warning."""
    assert _conflict.conflict_message() is None
    out = _run(['-W', 'error', '-c', 'import torchopt'])
    assert out.returncode == 0, out.stderr
    report = _run(['-W', 'error', '-m', 'torchopt'])
    assert report.returncode == 0, report.stderr
    assert 'WARNING' not in report.stdout


def test_conflict_needs_both_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only ``torchopt`` (sources used from a checkout, no torchopt-core) is not a conflict."""
    versions = {'torchopt': '0.7.3', 'torchopt-core': None}
    monkeypatch.setattr(_conflict, '_version', versions.get)
    assert _conflict.conflict_message() is None
    versions['torchopt-core'] = '0.8.0'
    message = _conflict.conflict_message()
    assert message is not None and '(0.7.3)' in message and '(0.8.0)' in message
