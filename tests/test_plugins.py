"""The plugin contract (DESIGN.md §3): discovery, lazy loading, upstream paths, errors."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

import torchopt
from torchopt import plugins

PLUGINS = {
    'implicit': 'torchopt_implicit',
    'zero': 'torchopt_zero',
    'distributed': 'torchopt_distributed',
    'viz': 'torchopt_viz',
    'accel': 'torchopt_accel',
}


def test_import_torchopt_loads_no_plugin(fresh_python):
    code = textwrap.dedent(
        """
        import json, sys, time
        import torch
        before = set(sys.modules)
        t0 = time.perf_counter()
        import torchopt
        elapsed = time.perf_counter() - t0
        added = sorted(set(sys.modules) - before)
        print(json.dumps({'added': added, 'elapsed': elapsed}))
        """
    )
    out = fresh_python(code)
    assert out.returncode == 0, out.stderr
    added = json.loads(out.stdout)['added']
    assert not [m for m in added if m.startswith(tuple(PLUGINS.values()))]
    assert not [m for m in added if m.split('.')[0] == 'graphviz']
    assert not [m for m in added if m.startswith('torch.distributed.rpc')]


def test_all_entry_points_found():
    rows = {row.name: row for row in plugins.plugins()}
    for name in PLUGINS:
        assert rows[name].distribution == f'torchopt-{name}'
        assert rows[name].version == torchopt.__version__
        assert rows[name].status in ('available', 'loaded')


@pytest.mark.parametrize(
    ('path', 'target'),
    [
        ('torchopt.diff.implicit', 'torchopt_implicit'),
        ('torchopt.linear_solve', 'torchopt_implicit.linear_solve'),
        ('torchopt.linalg', 'torchopt_implicit.linalg'),
        ('torchopt.diff.zero_order', 'torchopt_zero'),
        ('torchopt.distributed', 'torchopt_distributed'),
        ('torchopt.visual', 'torchopt_viz'),
    ],
)
def test_upstream_paths_resolve_by_import_and_attribute(path, target):
    module = importlib.import_module(path)
    assert module is importlib.import_module(target)
    parent, _, name = path.rpartition('.')
    assert getattr(importlib.import_module(parent), name) is module


def test_plugin_status_becomes_loaded():
    plugins.load('viz')
    assert {r.name: r.status for r in plugins.plugins()}['viz'] == 'loaded'


def test_missing_plugin_names_the_install_command(monkeypatch):
    monkeypatch.setattr(plugins, '_scan', lambda: ({}, {}))
    monkeypatch.setattr(plugins, '_loaded', {})
    with pytest.raises(ImportError, match=r'pip install "torchopt-core\[zero\]"'):
        plugins.load('zero')
    with pytest.raises(ImportError, match=r'torchopt-core\[implicit\]'):
        plugins.resolve('torchopt.linalg')
    assert {r.name: r.status for r in plugins.plugins()}['zero'] == 'missing'


def test_blocked_plugins(fresh_python):
    code = textwrap.dedent(
        """
        import torchopt
        rows = {r.name: r.status for r in torchopt.plugins.plugins()}
        assert rows['viz'] == 'blocked' and rows['accel'] == 'blocked', rows
        try:
            torchopt.visual
        except ImportError as ex:
            assert 'blocked' in str(ex) and 'TORCHOPT_DISABLE_PLUGINS' in str(ex), ex
        else:
            raise AssertionError('torchopt.visual resolved although blocked')
        try:
            import torchopt.visual
        except ImportError:
            pass
        else:
            raise AssertionError('import torchopt.visual worked although blocked')
        assert torchopt.accelerated_op_available('cpu') is False
        import torchopt.diff.implicit  # not blocked
        print('ok')
        """
    )
    out = fresh_python(code, env={'TORCHOPT_DISABLE_PLUGINS': 'viz, accel'})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'


def test_broken_plugin_is_reported_and_core_still_imports(fresh_python, tmp_path):
    dist = tmp_path / 'torchopt_fake_broken-1.0.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text(
        'Metadata-Version: 2.1\nName: torchopt-fake-broken\nVersion: 1.0\n'
    )
    (dist / 'entry_points.txt').write_text(
        '[torchopt.plugins]\nfake = fake_broken_plugin:plugin\nextra = fake_broken_plugin:plugin\n'
    )
    (tmp_path / 'fake_broken_plugin.py').write_text('raise RuntimeError("kaboom at import")\n')
    code = textwrap.dedent(
        """
        import torchopt
        from torchopt import plugins
        try:
            plugins.load('fake')
        except ImportError as ex:
            assert "'fake'" in str(ex) and 'kaboom at import' in str(ex), ex
        else:
            raise AssertionError('broken plugin loaded')
        rows = {r.name: r for r in plugins.plugins()}
        assert rows['fake'].status == 'broken', rows['fake']
        assert 'kaboom' in rows['fake'].error
        assert rows['extra'].status == 'available'
        assert not plugins.is_available('extra')
        import torchopt.diff.implicit  # the other plugins still work
        torchopt.visual
        print('ok')
        """
    )
    out = fresh_python(code, env={'PYTHONPATH': str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'


def test_python_m_torchopt_reports_plugins(fresh_python):
    out = fresh_python('import runpy; runpy.run_module("torchopt", run_name="__main__")')
    assert out.returncode == 0, out.stderr
    assert 'torchopt-core' in out.stdout
    for name in PLUGINS:
        assert f'torchopt-{name}' in out.stdout
    assert 'accelerated op:' in out.stdout


def test_accelerated_op_available_never_raises():
    for devices in (None, 'cpu', 'cuda', 0, 1, 'meta', ['cpu', 'cuda'], 'not-a-device'):
        assert torchopt.accelerated_op_available(devices) in (True, False)


def _fake_dist(root, name: str, entry_points: str) -> None:
    """An installed distribution ``name`` 1.0 under ``root`` declaring ``entry_points``."""
    dist = root / f'{name.replace("-", "_")}-1.0.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n')
    (dist / 'entry_points.txt').write_text(f'[torchopt.plugins]\n{entry_points}\n')


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as in a new process: nothing loaded, broken or reported yet."""
    monkeypatch.setattr(plugins, '_loaded', {})
    monkeypatch.setattr(plugins, '_broken', {})
    monkeypatch.setattr(plugins, '_reported_disable', set())


@pytest.mark.usefixtures('fresh_registry')
def test_unknown_disable_names_are_reported_at_the_callers_line(monkeypatch):
    monkeypatch.setenv('TORCHOPT_DISABLE_PLUGINS', 'IMPLICIT, all,*,vizz,viz')
    with pytest.warns(UserWarning, match='TORCHOPT_DISABLE_PLUGINS') as caught:
        rows = {r.name: r.status for r in plugins.plugins()}  # disable-report
    assert len(caught) == 1
    record = caught[0]
    line = next(
        i
        for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
        if text.endswith('# disable-report')
    )
    assert (record.filename, record.lineno) == (__file__, line)
    message = str(record.message)
    assert "'IMPLICIT' (did you mean 'implicit'?)" in message
    assert "'all' (not a wildcard)" in message and "'*' (not a wildcard)" in message
    assert "'vizz' (did you mean 'viz'?)" in message
    assert 'block nothing' in message and 'accel,distributed,implicit,viz,zero' in message
    assert rows['viz'] == 'blocked'
    assert rows['implicit'] != 'blocked'  # 'IMPLICIT' blocks nothing, as the warning says
    assert plugins.load('implicit') is importlib.import_module('torchopt_implicit')
    # reported once per value of the variable, and in `python -m torchopt`
    plugins.plugins()
    from torchopt.__main__ import report

    assert "WARNING: TORCHOPT_DISABLE_PLUGINS names no plugin called '*'" in report()


@pytest.mark.usefixtures('fresh_registry')
def test_known_and_third_party_disable_names_are_not_reported(monkeypatch, tmp_path, recwarn):
    _fake_dist(tmp_path, 'torchopt-fake-third', 'third = fake_third_plugin:plugin')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('TORCHOPT_DISABLE_PLUGINS', 'accel,third')
    rows = {r.name: r.status for r in plugins.plugins()}
    assert rows['accel'] == rows['third'] == 'blocked'
    assert plugins._disable_problem() is None
    assert not [w for w in recwarn if 'TORCHOPT_DISABLE_PLUGINS' in str(w.message)]


@pytest.mark.usefixtures('fresh_registry')
def test_a_plugin_name_declared_twice_is_reported_not_picked(monkeypatch, tmp_path):
    (tmp_path / 'fake_viz_plugin.py').write_text(
        'from torchopt.plugins import PluginInfo\nplugin = PluginInfo("viz", "fake_viz_plugin")\n'
    )
    _fake_dist(tmp_path, 'torchopt-viz-fork', 'viz = fake_viz_plugin:plugin')
    monkeypatch.syspath_prepend(str(tmp_path))  # first on sys.path: it used to win silently
    row = {r.name: r for r in plugins.plugins()}['viz']
    assert row.status == 'broken'
    for text in (
        'declared by 2 distributions',
        'torchopt-viz 0.8.0',
        'torchopt-viz-fork 1.0',
        'uninstall all but one',
    ):
        assert text in row.error, row.error
    with pytest.raises(ImportError, match='declared by 2 distributions'):
        plugins.load('viz')
    assert 'fake_viz_plugin' not in sys.modules
    assert plugins.load('zero') is importlib.import_module('torchopt_zero')  # the others load


def test_disable_report_points_at_the_import_or_attribute(fresh_python):
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter('always')
        import torchopt
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            torchopt.visual  # line 7
        with warnings.catch_warnings(record=True) as again:
            warnings.simplefilter('always')
            import torchopt.diff.implicit
        print([(w.filename, w.lineno) for w in caught + again if 'viz_' in str(w.message)])
        """
    )
    out = fresh_python(code, env={'TORCHOPT_DISABLE_PLUGINS': 'viz_'})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('<string>', 7)]"  # once, at the user's line
