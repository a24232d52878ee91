"""Smoke test of the examples gallery: every example runs in ``--quick`` mode and reaches its result.

Each example runs in a fresh interpreter (with a timeout) through its ``main(argv)``, which
returns the headline numbers; the test checks them against a stated threshold (the method beats
its baseline by a margin), not only the exit status, and checks that the plot was written.

Nothing here depends on the machine's speed. The examples run on one intra-op thread: on a
machine whose cores are busy with other work, OpenMP threads spin-wait for each other and a run
with two threads took about seven times the CPU time (LOLA-DiCE's quick run: 268 s instead of
40 s, and its 240 s timeout failed); the results are the same. The timeouts only catch a hung
run, so they are set far above a quick run's few tens of seconds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'

DRIVER = """
import importlib.util, json, sys
path, argv = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, str(__import__('pathlib').Path(path).parent))
spec = importlib.util.spec_from_file_location('example_under_test', path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module  # importable by name, as a script's __main__ (pickle, RPC)
spec.loader.exec_module(module)
result = module.main(argv)
print('RESULT_JSON ' + json.dumps(result, default=str))
"""


class Example(NamedTuple):
    """An example script, the extra arguments of its quick run, the plot it writes, the check."""

    script: str
    argv: tuple[str, ...]
    plot: str | None
    check: Callable[[dict], bool]
    threshold: str  # the check, in words (shown on failure)


CASES = [
    Example(
        'maml/maml_digits.py',
        ('--quick',),
        'maml_digits.png',
        lambda r: r['maml'] > r['baseline'] + 0.03 and r['maml'] > 0.4,
        'MAML accuracy > random-init baseline + 0.03 and > 2x chance (0.2)',
    ),
    Example(
        'maml_rl/maml_rl.py',
        ('--quick',),
        'maml_rl.png',
        lambda r: r['maml'] > r['baseline'] + 0.5 and r['maml'] > r['uniform'],
        'MAML adapted return > uniform-init adapted return + 0.5',
    ),
    Example(
        'mgrl/mgrl.py',
        ('--quick',),
        'mgrl.png',
        lambda r: r['mgrl'] > 0.8 * r['optimal'] and r['baseline'] < 2.0 and r['gamma'] > 0.7,
        'MGRL return > 80% of optimal (10), fixed-gamma return < 2, learned gamma > 0.7',
    ),
    Example(
        'lola/lola_dice.py',
        ('--quick', '--lookaheads', '3'),
        'lola_dice.png',
        lambda r: (
            r['lola_reward'] > r['naive_reward'] + 0.2
            and r['lola_cooperating_runs'] > r['naive_cooperating_runs']
        ),
        'LOLA-DiCE reward > naive + 0.2 and more LOLA runs cooperate than naive runs',
    ),
    Example(
        'l2r/l2r.py',
        ('--quick',),
        'l2r.png',
        lambda r: r['l2r'] > r['baseline'] and r['l2r'] > 0.85,
        'L2R balanced test accuracy > plain training and > 0.85',
    ),
    Example(
        'func/maml_vmap.py',
        ('--quick',),
        'maml_vmap.png',
        lambda r: r['maml'] > r['baseline'] + 0.03 and r['grad_max_diff'] < 1e-5,
        'MAML > random init + 0.03; vmap and loop meta-gradients agree to 1e-5',
    ),
    Example(
        'imaml/imaml_digits.py',
        ('--quick', '--api', 'both'),
        'imaml.png',
        lambda r: (
            r['functional_imaml'] > r['functional_baseline'] + 0.1
            and r['module_imaml'] > r['module_baseline'] + 0.1
        ),
        'iMAML meta-test accuracy > no-meta-learning baseline + 0.1, both APIs',
    ),
    Example(
        'zero_order/step_loss.py',
        ('--quick',),
        'step_loss.png',
        lambda r: (
            r['fd_rel_error'] < 1e-6
            and r['es_final'] < 0.5 * r['es_first']
            and r['es_final'] < r['exact_final'] + 0.05
        ),
        'closed form = finite differences; ES training halves the 0-1 loss and ends within '
        '0.05 of training on the exact smoothed gradient',
    ),
    Example(
        'func/ensemble_vmap.py',
        ('--quick',),
        'ensemble_vmap.png',
        lambda r: (
            r['max_param_diff'] < 1e-4
            and r['ensemble'] >= r['member_mean'] - 0.005
            and r['ensemble'] > 0.85
        ),
        'vmap and one-by-one parameters agree to 1e-4; ensemble accuracy >= mean member, > 0.85',
    ),
    Example(
        'long_horizon/lr_schedule.py',
        ('--quick',),
        'lr_schedule.png',
        lambda r: r['learned_val'] < 0.9 * r['constant_val'],
        'learned per-step schedule: final validation loss < 0.9 x the best constant rate',
    ),
    # A world of one process (no launcher); torchrun with 2 processes and both backends runs in
    # packages/torchopt-distributed/tests/test_worlds.py.
    Example(
        'distributed/maml.py',
        ('--quick', '--backend', 'collective'),
        'maml.png',
        lambda r: r['after'] > r['before'] + 0.05,
        'collective MAML, one process: meta-test accuracy after > before + 0.05',
    ),
]


#: Seconds before a run counts as hung (a quick run takes well under a minute on an idle machine).
RUN_TIMEOUT = 1200


def run_example(script: Path, argv: list[str], timeout: float = RUN_TIMEOUT) -> dict:
    """Run ``main(argv)`` of ``script`` in a fresh interpreter and return its result."""
    # One thread: immune to other processes on the cores (see the module docstring).
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    proc = subprocess.run(
        [sys.executable, '-c', DRIVER, str(script), json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=script.parent,
    )
    assert proc.returncode == 0, f'{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT_JSON ')]
    assert lines, f'{script} printed no result:\n{proc.stdout[-3000:]}'
    return json.loads(lines[-1][len('RESULT_JSON ') :]), proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize('case', CASES, ids=[c.script for c in CASES])
def test_example_quick(case: Example, tmp_path: Path) -> None:
    argv = [*case.argv]
    if case.plot is not None:
        argv += ['--out', str(tmp_path)]
    result, stdout = run_example(EXAMPLES / case.script, argv)
    assert all(math.isfinite(v) for v in result.values() if isinstance(v, float)), result
    assert case.check(result), f'{case.script}: expected {case.threshold}, got {result}\n{stdout}'
    if case.plot is not None:
        plot = tmp_path / case.plot
        assert plot.is_file() and plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', plot


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.skipif(shutil.which('dot') is None, reason='needs the Graphviz `dot` program')
def test_visualize_example(tmp_path: Path) -> None:
    result, _ = run_example(EXAMPLES / 'visualize' / 'visualize.py', ['--out', str(tmp_path)])
    pngs = [Path(p) for p in result if str(p).endswith('.png')]
    assert len(pngs) == 2, result
    for png in pngs:
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png


def test_every_gallery_example_is_smoke_tested() -> None:
    """Each example folder with a ``main(argv)`` returning results has an entry above."""
    tested = {c.script.split('/')[0] for c in CASES} | {'visualize'}
    owned_elsewhere = {'distributed'}  # its torchrun runs: packages/torchopt-distributed/tests
    folders = {
        p.name for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith(('_', '.'))
    }
    missing = folders - tested - owned_elsewhere - {'__pycache__'}
    assert not missing, f'examples without a smoke test: {sorted(missing)}'
