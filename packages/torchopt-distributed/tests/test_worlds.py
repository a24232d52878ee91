"""Real RPC worlds of separate processes on 127.0.0.1.

Every test launches its processes with a hard deadline (they are killed, whole process group,
when it passes) and carries its own pytest timeout on top, so no test can hang CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _todist_launch import free_port, launch

pytestmark = pytest.mark.slow

CHECK_NAMES = [
    'batch_sum',
    'batch_mean_default',
    'exclusive_mean',
    'dim_partitioner_sum',
    'own_defaults_partitioner',
    'round_robin',
    'named_and_int_targets',
    'remote_exception',
    'autograd_backward',
    'autograd_grad_and_inputs',
    'maml_meta_gradient',
]


@pytest.fixture(scope='module')
def world_of_three(tmp_path_factory):
    """One world of 3 processes runs every check of ``worlds/checks.py``; rank 0 reports."""
    out = tmp_path_factory.mktemp('checks') / 'results.json'
    ranks = launch('checks.py', 3, timeout=60, args=[str(out)])
    for rank in ranks:
        assert rank.returncode == 0, (
            f'rank {rank.rank} exited {rank.returncode}:\n{rank.stderr[-4000:]}'
        )
    return json.loads(out.read_text())


@pytest.mark.timeout(90)
def test_every_check_ran(world_of_three):
    assert sorted(world_of_three) == sorted(CHECK_NAMES)


@pytest.mark.timeout(90)
@pytest.mark.parametrize('check', CHECK_NAMES)
def test_distributed_equals_serial(world_of_three, check):
    """parallelize/remote calls and distributed autograd equal serial references (float64)."""
    assert world_of_three[check] == 'ok', world_of_three[check]


def _result(rank):
    lines = [line for line in rank.stdout.splitlines() if line.startswith('RESULT ')]
    assert lines, (
        f'rank {rank.rank} reported nothing (rc={rank.returncode}):\n{rank.stderr[-4000:]}'
    )
    return json.loads(lines[-1][len('RESULT ') :])


@pytest.mark.timeout(60)
def test_missing_rank_fails_within_bound():
    """Rank 1 of 2 never starts: rank 0 fails after init_timeout, naming rank 1."""
    bound = 2.0
    (rank0,) = launch('failures.py', 2, ranks=[0], timeout=45, args=['idle', str(bound)])
    assert rank0.returncode == 3, rank0.stderr[-4000:]
    result = _result(rank0)
    assert 'RendezvousTimeoutError' in result['error']
    assert 'missing ranks [1]' in result['error']
    assert result['kind'] == 'TimeoutError'
    assert bound <= result['elapsed'] < bound + 10


@pytest.mark.timeout(60)
def test_missing_master_fails_within_bound():
    """Rank 0 (the store host) never starts: rank 1 fails after init_timeout, naming rank 0."""
    bound = 2.0
    (rank1,) = launch('failures.py', 2, ranks=[1], timeout=45, args=['idle', str(bound)])
    assert rank1.returncode == 3, rank1.stderr[-4000:]
    result = _result(rank1)
    assert 'could not reach the rendezvous store of rank 0' in result['error']
    assert result['elapsed'] < bound + 15


@pytest.mark.timeout(60)
def test_init_timeout_from_environment():
    """TORCHOPT_RPC_INIT_TIMEOUT bounds the rendezvous when the argument is not given."""
    (rank0,) = launch(
        'failures.py', 3, ranks=[0], timeout=45, args=['idle_env'],
        env={'TORCHOPT_RPC_INIT_TIMEOUT': '1.5'},
    )  # fmt: skip
    result = _result(rank0)
    assert 'missing ranks [1, 2]' in result['error'] and 'after 1.5 s' in result['error']


@pytest.mark.timeout(60)
def test_dead_worker_surfaces_on_rank_zero():
    """A worker that dies inside a remote call gives rank 0 an error at once, and no hang."""
    ranks = launch('failures.py', 2, timeout=45, args=['worker_dies'])
    rank0, rank1 = ranks
    assert rank1.returncode == 7
    assert rank0.returncode == 0, rank0.stderr[-4000:]
    result = _result(rank0)
    assert result['error'] is not None
    assert result['call_time'] < 20  # bounded by the connection loss, not the 30 min default


@pytest.mark.timeout(90)
def test_workers_at_exit_keep_serving_a_late_rank_zero():
    """Ranks 1 and 2 finish at once and wait at exit; rank 0 works for 4 RPC timeouts, then calls
    them. Upstream's unbounded graceful shutdown serves those calls; a shutdown bounded by the
    RPC timeout had stopped the others' agents by then (``RuntimeError: eof`` on rank 0)."""
    ranks = launch('failures.py', 3, timeout=60, args=['late_call', '4'])
    for rank in ranks:
        assert rank.returncode == 0, f'rank {rank.rank}:\n{rank.stderr[-4000:]}'
    results = [_result(rank) for rank in ranks]
    assert results[0]['error'] is None
    assert results[0]['pids'] == {'1': results[1]['pid'], '2': results[2]['pid']}
    assert min(rank.elapsed for rank in ranks[1:]) >= 4  # they waited for rank 0


@pytest.mark.timeout(90)
def test_dead_peer_does_not_hang_the_others_at_exit():
    """Rank 2 dies at once; rank 1 waits at exit and still serves rank 0's late call; then both
    survivors exit (a local shutdown, as a dead peer can never join the graceful one)."""
    ranks = launch('failures.py', 3, timeout=60, args=['late_call_one_dies', '3'])
    assert ranks[2].returncode == 9
    for rank in ranks[:2]:
        assert rank.returncode == 0, f'rank {rank.rank}:\n{rank.stderr[-4000:]}'
    results = [_result(rank) for rank in ranks[:2]]
    assert results[0]['pids'] == {'1': results[1]['pid']}
    assert max(rank.elapsed for rank in ranks[:2]) < 45


@pytest.mark.timeout(120)
@pytest.mark.skipif(not shutil.which('torchrun', path=os.path.dirname(sys.executable)),
                    reason='torchrun is not installed next to this interpreter')  # fmt: skip
@pytest.mark.parametrize(
    ('backend', 'extra'),
    [('collective', []), ('collective', ['--poll']), ('rpc', [])],
    ids=['collective', 'collective-poll', 'rpc'],
)
def test_example_runs_under_torchrun(backend, extra, tmp_path):
    """``torchrun --nproc_per_node 2 examples/distributed/maml.py --quick --backend B`` trains,
    writes its plot and exits (the collective backend also with the polling all-reduce wait)."""
    root = Path(__file__).resolve().parents[3]
    script = root / 'examples' / 'distributed' / 'maml.py'
    torchrun = os.path.join(os.path.dirname(sys.executable), 'torchrun')
    env = dict(os.environ, TP_SOCKET_IFNAME='lo', GLOO_SOCKET_IFNAME='lo', OMP_NUM_THREADS='1')
    cmd = [
        torchrun, '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
        '--master_port', str(free_port()), str(script), '--quick', '--iterations', '8',
        '--backend', backend, '--out', str(tmp_path), *extra,
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        pytest.fail(f'torchrun did not finish in 100 s:\n{out}\n{err[-4000:]}')
    assert proc.returncode == 0, err[-4000:]
    assert '2 worker(s)' in out and ('collectives' in out) == (backend == 'collective')
    assert out.count('iter    8') == 1 and out.count('meta-test accuracy') == 1  # rank 0 only
    assert (tmp_path / 'maml.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert time.monotonic() - start < 100
