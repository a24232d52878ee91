"""Selective install from a wheelhouse: ``torchopt-core[implicit]`` brings exactly that plugin.

Builds the six wheels, makes a fresh virtual environment (torch and optree installed first from
the machine's package sources, with graphviz for the viz plugin), installs
``torchopt-core[implicit]`` from the wheelhouse only, and checks what is found; then ``[all]``
installs every plugin.
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from build_wheels import build  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def wheelhouse(tmp_path_factory):
    out = tmp_path_factory.mktemp('wheelhouse')
    wheels = build(out)
    names = sorted(w.name.split('-')[0] for w in wheels)
    assert names == sorted(
        [
            'torchopt_core',
            'torchopt_implicit',
            'torchopt_zero',
            'torchopt_distributed',
            'torchopt_viz',
            'torchopt_accel',
        ]
    )
    return out


@pytest.fixture(scope='module')
def fresh_venv(tmp_path_factory):
    path = tmp_path_factory.mktemp('venv')
    venv.EnvBuilder(with_pip=True).create(path)
    python = path / 'bin' / 'python'
    subprocess.run(
        [
            str(python),
            '-m',
            'pip',
            'install',
            '-q',
            'torch==2.13.0',
            'optree>=0.13',
            'graphviz>=0.20',
        ],
        check=True,
        timeout=900,
    )
    return python


def _pip_names(python: Path) -> set[str]:
    out = subprocess.run(
        [str(python), '-m', 'pip', 'list', '--format=freeze'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split('==')[0].lower() for line in out.splitlines()}


def _install(python: Path, wheelhouse: Path, requirement: str) -> None:
    subprocess.run(
        [
            str(python),
            '-m',
            'pip',
            'install',
            '-q',
            '--no-index',
            '--find-links',
            str(wheelhouse),
            requirement,
        ],
        check=True,
        timeout=600,
    )


def test_selective_then_all(wheelhouse, fresh_venv):
    _install(fresh_venv, wheelhouse, 'torchopt-core[implicit]')
    names = _pip_names(fresh_venv)
    assert {'torchopt-core', 'torchopt-implicit'} <= names
    assert not names & {'torchopt-zero', 'torchopt-distributed', 'torchopt-viz', 'torchopt-accel'}

    check = textwrap.dedent(
        """
        import torchopt
        rows = {r.name: r.status for r in torchopt.plugins.plugins()}
        assert rows['implicit'] == 'available', rows
        assert rows['zero'] == 'missing', rows
        import torchopt.diff.implicit
        try:
            import torchopt.diff.zero_order
        except ImportError as ex:
            assert 'pip install "torchopt-core[zero]"' in str(ex), ex
        else:
            raise AssertionError('zero_order imported without the plugin')
        assert torchopt.accelerated_op_available('cpu') is False
        print('ok')
        """
    )
    out = subprocess.run(
        [str(fresh_venv), '-c', check], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'

    _install(fresh_venv, wheelhouse, 'torchopt-core[all]')
    names = _pip_names(fresh_venv)
    assert {'torchopt-zero', 'torchopt-distributed', 'torchopt-viz', 'torchopt-accel'} <= names
    out = subprocess.run(
        [
            str(fresh_venv),
            '-c',
            'import torchopt; print(sorted(r.status for r in torchopt.plugins.plugins()))',
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert 'missing' not in out.stdout


def test_wheel_metadata(wheelhouse):
    """Every wheel carries the license file, classifiers, URLs and authors; accel is manylinux."""
    license_text = (ROOT / 'LICENSE').read_bytes()
    for wheel in sorted(wheelhouse.glob('*.whl')):
        dist, version = wheel.name.split('-')[:2]
        info = f'{dist}-{version}.dist-info'
        with zipfile.ZipFile(wheel) as zf:
            meta = email.parser.Parser().parsestr(zf.read(f'{info}/METADATA').decode())
            assert zf.read(f'{info}/licenses/LICENSE') == license_text, wheel.name
            tags = email.parser.Parser().parsestr(zf.read(f'{info}/WHEEL').decode()).get_all('Tag')
        assert meta['License-Expression'] == 'Apache-2.0', wheel.name
        assert meta.get_all('License-File') == ['LICENSE'], wheel.name
        assert meta['Author'], wheel.name
        assert meta.get_all('Project-URL'), wheel.name
        classifiers = meta.get_all('Classifier') or []
        assert 'Typing :: Typed' in classifiers and len(classifiers) > 10, wheel.name
        if dist == 'torchopt_accel':
            # repaired by auditwheel (tools/build_wheels.py), torch's libraries left out
            assert tags and all('-manylinux_' in tag for tag in tags), tags
            with zipfile.ZipFile(wheel) as zf:
                grafted = [n for n in zf.namelist() if '.libs/' in n]
            assert not grafted, grafted
        else:
            assert tags == ['py3-none-any'], (wheel.name, tags)
