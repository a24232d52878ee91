"""What ``import torchopt`` loads (issue #23: import cost), and that the lazy names still work.

``import torchopt`` imports five small core modules; every public name is imported on first
access (PEP 562). These tests check module names in fresh interpreters, never times: the time
is measured with ``python -X importtime`` (see the CHANGELOG).
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import torchopt

#: The only torchopt modules ``import torchopt`` may load.
EAGER = {
    'torchopt',
    'torchopt.plugins',
    'torchopt._states',
    'torchopt._conflict',
    'torchopt.version',
}
#: Imported on first use only: the plugins, the heavy core modules and what they pull in.
LAZY = [
    'torchopt_implicit',
    'torchopt_zero',
    'torchopt_distributed',
    'torchopt_viz',
    'torchopt_accel',
    'graphviz',
    'torch.distributed.rpc',
    'torch.distributions',
    'optree',
    'torchopt.alias',
    'torchopt.base',
    'torchopt.transform',
    'torchopt.optim',
    'torchopt.nn',
    'torchopt.diff',
    'torchopt.typing',
    'torchopt.pytree',
    'torchopt.schedule',
    'torchopt.unroll',
    'torchopt.utils',
    'torchopt.accelerated_op',
    'torchopt._dispatch',
    'torchopt._kernels',
]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    env.pop('TORCHOPT_DISABLE_PLUGINS', None)
    return subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _json(code: str):
    out = _run(code)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_loads_only_the_eager_modules():
    added = _json(
        """
        import json, sys
        import torch
        before = set(sys.modules)
        import torchopt
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    assert {m for m in added if m.split('.')[0] == 'torchopt'} == EAGER
    loaded_lazy = [m for m in added if any(m == n or m.startswith(n + '.') for n in LAZY)]
    assert loaded_lazy == []


def test_first_access_imports_the_defining_module_only_then():
    result = _json(
        """
        import json, sys
        import torchopt
        before = 'torchopt.alias' in sys.modules
        fn = torchopt.adam
        print(json.dumps([before, 'torchopt.alias' in sys.modules, fn.__module__,
                          'adam' in vars(torchopt), 'torchopt_viz' in sys.modules]))
        """
    )
    assert result == [False, True, 'torchopt.alias._optimizers', True, False]


def test_public_api_listing_and_star_import():
    assert len(torchopt.__all__) == len(set(torchopt.__all__))
    listed = set(dir(torchopt))
    assert set(torchopt.__all__) <= listed
    for name in ('alias', 'transform', 'optim', 'nn', 'diff', 'typing', 'visual', 'distributed'):
        assert name in listed
    namespace: dict = {}
    exec('from torchopt import *', namespace)
    for name in torchopt.__all__:
        assert namespace[name] is getattr(torchopt, name)
    assert torchopt.accelerated_op_available is torchopt.accelerated_op.is_available
    try:
        torchopt.no_such_name  # noqa: B018
    except AttributeError as ex:
        assert 'no_such_name' in str(ex)
    else:
        raise AssertionError('torchopt.no_such_name did not raise AttributeError')


def test_unroll_stays_the_function_after_importing_its_module():
    result = _json(
        """
        import json, types
        import torchopt.unroll
        import torchopt
        first = isinstance(torchopt.unroll, types.FunctionType)
        from torchopt import unroll
        print(json.dumps([first, unroll is torchopt.unroll, torchopt.unroll.__module__]))
        """
    )
    assert result == [True, True, 'torchopt.unroll']


def _states() -> dict:
    params = {'w': torch.linspace(-1, 1, 3), 'b': (torch.ones(2),)}
    opts = {
        'adam': torchopt.adam(1e-2),
        'sgd': torchopt.sgd(0.1, momentum=0.9, nesterov=True),
        'rmsprop': torchopt.rmsprop(centered=True, momentum=0.5),
        'adagrad': torchopt.adagrad(),
        'adadelta': torchopt.adadelta(),
        'radam': torchopt.radam(),
        'adamax': torchopt.adamax(),
        'nadam': torchopt.nadam(),
        'lion': torchopt.lion(),
        'chain': torchopt.chain(torchopt.clip_grad_norm(1.0), torchopt.adamw(weight_decay=0.1)),
        'finite': torchopt.apply_if_finite(torchopt.sgd(0.1), 3),
        'inject': torchopt.inject_hyperparams(torchopt.adam)(lr=0.1),
        'multisteps': torchopt.MultiSteps(torchopt.adam(0.1), 2),
    }
    return {name: opt.init(params) for name, opt in opts.items()}


def test_weights_only_load_after_a_bare_import(tmp_path):
    """A fresh process that only imports torchopt loads every state class weights-only."""
    states = _states()
    path = tmp_path / 'states.pt'
    torch.save(states, path)
    result = _json(
        f"""
        import json, sys
        import torch
        import torchopt
        lazy_before = 'torchopt.transform' in sys.modules
        states = torch.load({str(path)!r})  # weights_only=True, torch's default
        print(json.dumps([lazy_before, {{k: repr(v) for k, v in states.items()}}]))
        """
    )
    assert result == [False, {k: repr(v) for k, v in states.items()}]


def test_weights_only_load_fails_without_the_registration(tmp_path):
    """The check above can fail: without ``import torchopt`` the same file is refused."""
    buf = io.BytesIO()
    torch.save(_states()['adam'], buf)
    path = tmp_path / 'adam.pt'
    path.write_bytes(buf.getvalue())
    out = _run(f'import torch; torch.load({str(path)!r})')
    assert out.returncode != 0
    assert 'ScaleByAdamState' in out.stderr


def test_state_class_list_is_complete():
    """``_states.STATE_CLASS_NAMES`` names exactly the NamedTuples the core modules define."""
    result = _json(
        """
        import importlib, json, pkgutil
        import torchopt
        from torchopt import _states
        for info in pkgutil.walk_packages(torchopt.__path__, 'torchopt.'):
            if info.name != 'torchopt.__main__':
                importlib.import_module(info.name)
        found = [f'{c.__module__}.{c.__qualname__}' for c in _states.state_classes()]
        print(json.dumps([found, list(_states.STATE_CLASS_NAMES)]))
        """
    )
    found, listed = result
    assert sorted(listed) == found, (
        'update torchopt/_states.py STATE_CLASS_NAMES: '
        f'missing {sorted(set(found) - set(listed))}, stale {sorted(set(listed) - set(found))}'
    )


def test_type_checking_imports_match_the_lazy_table():
    """The imports type checkers read and the run-time table name the same objects."""
    source = Path(torchopt.__file__).read_text(encoding='utf-8')
    static: dict[str, tuple[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and getattr(node.test, 'id', '') == '_TYPE_CHECKING':
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                for alias in stmt.names:
                    static[alias.asname or alias.name] = (stmt.module, alias.name)
    submodules = {name for name, (module, _) in static.items() if module == 'torchopt'}
    assert submodules == set(torchopt._SUBMODULES)
    names = {name: v for name, v in static.items() if name not in submodules}
    assert names == torchopt._LAZY_NAMES
    assert set(names) | {'__version__'} >= set(torchopt.__all__)
