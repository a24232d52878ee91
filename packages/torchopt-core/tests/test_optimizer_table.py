"""The optimizer table is complete, and every suite runs every row of it (none drops out).

Each suite is collected in a subprocess; a plugin records, for every test function, the rows
its items take (a ``row`` argument, or a conformance factory named ``row:<id>``). Every suite
must have a function that runs all rows, and every function that takes rows must take all of
them, or exactly the ``torch.optim`` rows (``CASES``) where the test needs torch.optim; a row
may be marked ``xfail`` or ``skip`` only with a reason.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from optimizer_table import ALL, ALL_IDS, IDS

import torchopt

HERE = Path(__file__).parent
SUITES = [
    'test_parity_torch_optim.py',  # parity: torch.optim 1e-12, optax-rule references 1e-10
    'test_engine.py',  # missing gradients, pure states, vmap
    'test_parity_extended.py',  # differentiability
    'test_transform_conformance.py',  # conformance
    'test_shape_checks.py',  # shape checks in every entry point
    'test_signatures.py',  # signatures
    'test_classes_extended.py',  # torch-like class and Meta class
    'test_optimizer_state.py',  # checkpoints
]

_COLLECT = textwrap.dedent(
    """
    import json, sys
    import pytest

    found = {}

    class Recorder:
        def pytest_collection_modifyitems(self, items):
            for item in items:
                params = getattr(getattr(item, 'callspec', None), 'params', {})
                ids = [p.id for p in params.values() if type(p).__name__ == 'Row']
                ids += [p[4:] for p in params.values()
                        if isinstance(p, str) and p.startswith('row:')]
                if not ids:
                    continue
                marks = [m for m in item.iter_markers() if m.name in ('skip', 'xfail')]
                suite = found.setdefault(item.path.name, {})
                entry = suite.setdefault(item.originalname, {'rows': [], 'unexplained': []})
                entry['rows'] += ids
                if any(not (m.kwargs.get('reason') or m.args) for m in marks):
                    entry['unexplained'] += ids

    pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', '-p', 'no:xdist',
                 *sys.argv[1:]], plugins=[Recorder()])
    print('JSON' + json.dumps(found))
    """
)


@pytest.fixture(scope='module')
def collected():
    """``{suite: {test function: {'rows': [...], 'unexplained': [...]}}}``, one collection."""
    res = subprocess.run([sys.executable, '-c', _COLLECT, *(str(HERE / s) for s in SUITES)],
                         cwd=HERE, capture_output=True, text=True, timeout=900)  # fmt: skip
    lines = [x for x in res.stdout.splitlines() if x.startswith('JSON')]
    assert lines, res.stdout[-2000:] + res.stderr[-2000:]
    return json.loads(lines[-1][4:])


@pytest.mark.parametrize('suite', SUITES)
def test_every_suite_runs_every_row(suite, collected):
    found = collected.get(suite, {})
    assert any(set(v['rows']) == set(ALL_IDS) for v in found.values()), sorted(found)
    for function, entry in found.items():
        assert set(entry['rows']) in (set(ALL_IDS), set(IDS)), (function, entry['rows'])
        assert not entry['unexplained'], (function, entry['unexplained'])


def test_rows_are_complete():
    assert len(set(ALL_IDS)) == len(ALL_IDS)
    for row in ALL:
        assert (row.torch_cls is None) != (row.reference is None), row.id  # exactly one
        assert issubclass(row.cls, torchopt.Optimizer), row.id
        assert issubclass(row.meta, torchopt.MetaOptimizer), row.id
        assert callable(row.fn) and getattr(torchopt, row.fn.__name__) is row.fn


def test_every_optimizer_has_a_row():
    aliases = {row.fn.__name__ for row in ALL}
    assert aliases == set(torchopt.alias.__all__)
    classes = {row.cls for row in ALL} | {row.meta for row in ALL}
    public = {getattr(torchopt.optim, n) for n in torchopt.optim.__all__}
    public = {c for c in public if inspect.isclass(c) and c not in (
        torchopt.Optimizer, torchopt.MetaOptimizer, torchopt.FuncOptimizer)}  # fmt: skip
    assert public - classes == set()
