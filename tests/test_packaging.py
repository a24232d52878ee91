"""Packaging metadata of the six distributions, read from their ``pyproject.toml`` files.

Cheap checks (no build): versions and the ``==`` pins between the packages move in lockstep,
core's extras name each plugin, and every package carries the same license, authors, URLs and
classifiers, with its own copy of the license file. The built wheels' metadata is checked by
``tests/test_selective_install.py``, which builds them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the test environments run 3.11
    tomllib = pytest.importorskip('tomli')

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ('implicit', 'zero', 'distributed', 'viz', 'accel')
PACKAGES = ('torchopt-core', *(f'torchopt-{name}' for name in PLUGINS))
#: The newest Python minor the classifiers list (the floor comes from ``requires-python``).
NEWEST_PYTHON = 13


def _pyproject(path: Path) -> dict:
    with path.open('rb') as f:
        return tomllib.load(f)


@pytest.fixture(scope='module')
def projects() -> dict[str, dict]:
    return {name: _pyproject(ROOT / 'packages' / name / 'pyproject.toml') for name in PACKAGES}


def _version() -> str:
    text = (ROOT / 'packages/torchopt-core/src/torchopt/version.py').read_text(encoding='utf-8')
    match = re.search(r"^__version__ = '([^']+)'$", text, flags=re.MULTILINE)
    assert match, 'torchopt/version.py has no __version__ line'
    return match.group(1)


def _requirements(project: dict) -> list[str]:
    """Every requirement string of a pyproject: build, run time and extras."""
    reqs = [*project['build-system']['requires'], *project['project'].get('dependencies', [])]
    for extra in project['project'].get('optional-dependencies', {}).values():
        reqs += extra
    return reqs


def test_versions_move_in_lockstep(projects: dict[str, dict]) -> None:
    version = _version()
    versions = {name: p['project']['version'] for name, p in projects.items()}
    versions['torchopt-workspace (root pyproject.toml)'] = _pyproject(ROOT / 'pyproject.toml')[
        'project'
    ]['version']
    assert set(versions.values()) == {version}, versions


def test_pins_between_packages_are_exact_and_current(projects: dict[str, dict]) -> None:
    version = _version()
    seen = 0
    for name, project in projects.items():
        for text in _requirements(project):
            req = Requirement(text)
            if req.name.startswith('torchopt'):
                seen += 1
                assert req.specifier == SpecifierSet(f'=={version}'), (name, text)
                assert req.name in PACKAGES, (name, text)
    assert seen == 2 * len(PLUGINS) + len(PLUGINS)  # core's extras and `all`, one pin per plugin


def test_core_extras_and_plugin_entry_points_agree(projects: dict[str, dict]) -> None:
    from torchopt.plugins import KNOWN_PLUGINS

    version = _version()
    extras = projects['torchopt-core']['project']['optional-dependencies']
    assert set(extras) == {*PLUGINS, 'all'}
    for name in PLUGINS:
        assert extras[name] == [f'torchopt-{name}=={version}']
        eps = projects[f'torchopt-{name}']['project']['entry-points']['torchopt.plugins']
        assert list(eps) == [name]
        assert projects[f'torchopt-{name}']['project']['dependencies'][0] == (
            f'torchopt-core=={version}'
        )
    assert sorted(extras['all']) == sorted(f'torchopt-{n}=={version}' for n in PLUGINS)
    assert KNOWN_PLUGINS == {name: f'torchopt-{name}' for name in PLUGINS}


def test_every_package_has_the_shared_metadata(projects: dict[str, dict]) -> None:
    core = projects['torchopt-core']['project']
    license_text = (ROOT / 'LICENSE').read_bytes()
    for name, project in projects.items():
        meta = project['project']
        folder = ROOT / 'packages' / name
        assert meta['license'] == 'Apache-2.0', name
        assert meta['license-files'] == ['LICENSE'], name
        assert (folder / 'LICENSE').read_bytes() == license_text, f'{name}/LICENSE differs'
        assert meta['authors'] == core['authors'] and meta['authors'], name
        assert meta['urls'] == core['urls'] and meta['urls'], name
        assert (folder / meta['readme']).is_file(), name
        classifiers = meta['classifiers']
        assert len(set(classifiers)) == len(classifiers), name
        for prefix in (
            'Development Status ::',
            'Intended Audience ::',
            'Operating System ::',
            'Topic ::',
        ):
            assert any(c.startswith(prefix) for c in classifiers), (name, prefix)
        assert not [c for c in classifiers if c.startswith('License ::')], (
            f'{name}: the SPDX `license` expression replaces License classifiers (PEP 639)'
        )
        if 'Typing :: Typed' in classifiers:
            module = name.replace('torchopt-core', 'torchopt').replace('-', '_')
            assert (folder / 'src' / module / 'py.typed').is_file(), name


def test_python_classifiers_match_requires_python(projects: dict[str, dict]) -> None:
    for name, project in projects.items():
        meta = project['project']
        floor = re.fullmatch(r'>=3\.(\d+)', meta['requires-python'])
        assert floor, (name, meta['requires-python'])
        listed = [c for c in meta['classifiers'] if re.fullmatch(r'.*Python :: 3\.\d+', c)]
        expected = [
            f'Programming Language :: Python :: 3.{minor}'
            for minor in range(int(floor.group(1)), NEWEST_PYTHON + 1)
        ]
        assert listed == expected, name


def test_accel_pins_the_torch_minor_it_builds_against(projects: dict[str, dict]) -> None:
    project = projects['torchopt-accel']
    build = [Requirement(r) for r in project['build-system']['requires']]
    (built,) = [r for r in build if r.name == 'torch']
    deps = [Requirement(r) for r in project['project']['dependencies']]
    (runtime,) = [r for r in deps if r.name == 'torch']
    (pinned,) = [spec.version for spec in built.specifier if spec.operator == '==']
    minor = '.'.join(pinned.split('.')[:2])
    assert runtime.specifier == SpecifierSet(f'=={minor}.*'), runtime
