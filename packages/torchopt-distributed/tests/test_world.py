"""World helpers that need no RPC: environment parsing, names, rank gating, options."""

from __future__ import annotations

import os
import pickle
import platform
import subprocess
import sys

import pytest

from torchopt_distributed import world
from torchopt_distributed.world import WorldInfo


def test_read_world_info_defaults_to_single_process():
    assert world._read_world_info({}) == WorldInfo(0, 1, 0, 1)


def test_read_world_info_torchrun_variables():
    env = {'RANK': '5', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '4'}
    info = world._read_world_info(env)
    assert info == WorldInfo(world_rank=5, world_size=8, local_rank=1, local_world_size=4)
    assert info.rank == 5
    assert info.worker_name == 'worker5'


@pytest.mark.parametrize(
    ('env', 'message'),
    [
        ({'RANK': 'x'}, 'RANK must be an integer'),
        ({'RANK': '2', 'WORLD_SIZE': '2'}, 'RANK must be in'),
        ({'WORLD_SIZE': '0'}, 'WORLD_SIZE must be >= 1'),
        ({'LOCAL_RANK': '1'}, 'LOCAL_RANK must be in'),
    ],
)
def test_read_world_info_rejects_bad_environment(env, message):
    with pytest.raises(ValueError, match=message):
        world._read_world_info(env)


def test_getters_follow_environment_of_this_process():
    info = world.get_world_info()
    assert (world.get_world_rank(), world.get_world_size()) == (info.world_rank, info.world_size)
    assert world.get_rank is world.get_world_rank
    assert (world.get_local_rank(), world.get_local_world_size()) == info[2:]
    assert world.get_world_info.world_info is info
    assert world.get_world_info.WORLD_SIZE == info.world_size


@pytest.mark.parametrize(
    ('rank', 'size', 'name'),
    [(0, 1, 'worker0'), (7, 16, 'worker07'), (3, 10, 'worker03'), (9, 10, 'worker09'),
     (123, 1000, 'worker0123')],
)  # fmt: skip
def test_default_worker_name_format(rank, size, name):
    assert world.default_worker_name_format(rank, size, 0, 1) == name


def test_get_worker_id_passes_ints_and_rejects_other_types():
    assert world.get_worker_id(3) == 3
    with pytest.raises(TypeError, match='id must be'):
        world.get_worker_id(1.0)
    with pytest.raises(TypeError, match='id must be'):
        world.get_worker_id(True)


@pytest.fixture
def as_rank(monkeypatch):
    def set_rank(rank, size=4):
        monkeypatch.setattr(world, '_WORLD_INFO', WorldInfo(rank, size, rank, size))

    return set_rank


@pytest.mark.parametrize('rank', [0, 1, 2, 3])
def test_rank_decorators(as_rank, rank):
    as_rank(rank)

    def f(x):
        return x + 1

    assert world.on_rank(1, 2)(f)(1) == (2 if rank in (1, 2) else None)
    assert world.not_on_rank(1, 2)(f)(1) == (None if rank in (1, 2) else 2)
    assert world.rank_zero_only(f)(1) == (2 if rank == 0 else None)
    assert world.rank_non_zero_only(f)(1) == (None if rank == 0 else 2)
    assert world.rank_all(f) is f
    assert world.on_rank(0)(f).__name__ == 'f'


def test_rank_is_captured_at_decoration(as_rank):
    as_rank(0)
    g = world.rank_zero_only(lambda: 'ran')
    as_rank(1)
    assert g() == 'ran'


def test_rank_decorators_validate_ranks():
    with pytest.raises(ValueError, match='at least one rank'):
        world.on_rank()
    with pytest.raises(TypeError, match='int ranks'):
        world.on_rank('0')


def test_init_timeout_from_argument_environment_and_default(monkeypatch):
    monkeypatch.delenv(world.INIT_TIMEOUT_ENV, raising=False)
    assert world._resolve_init_timeout(None) == world.DEFAULT_INIT_TIMEOUT
    assert world._resolve_init_timeout(2.5) == 2.5
    monkeypatch.setenv(world.INIT_TIMEOUT_ENV, '7')
    assert world._resolve_init_timeout(None) == 7.0
    assert world._resolve_init_timeout(3) == 3.0  # the argument wins
    monkeypatch.setenv(world.INIT_TIMEOUT_ENV, 'soon')
    with pytest.raises(ValueError, match='TORCHOPT_RPC_INIT_TIMEOUT'):
        world._resolve_init_timeout(None)
    with pytest.raises(ValueError, match='init_timeout must be a positive'):
        world._resolve_init_timeout(0)


def test_loopback_only_when_asked(monkeypatch):
    monkeypatch.delenv(world.LOOPBACK_ENV, raising=False)
    assert world._resolve_loopback(None) is False
    assert world._resolve_loopback(True) is True
    monkeypatch.setenv(world.LOOPBACK_ENV, '1')
    assert world._resolve_loopback(None) is True
    assert world._resolve_loopback(False) is False
    monkeypatch.setenv(world.LOOPBACK_ENV, 'maybe')
    with pytest.raises(ValueError, match='TORCHOPT_RPC_LOOPBACK'):
        world._resolve_loopback(None)


def test_use_loopback_sets_interfaces_and_checks_master(monkeypatch):
    for var in ('TP_SOCKET_IFNAME', 'GLOO_SOCKET_IFNAME', 'MASTER_ADDR'):
        monkeypatch.delenv(var, raising=False)
    world._use_loopback()
    import os

    assert os.environ['TP_SOCKET_IFNAME'] == os.environ['GLOO_SOCKET_IFNAME']
    assert os.environ['TP_SOCKET_IFNAME'].startswith('lo')
    assert os.environ['MASTER_ADDR'] == '127.0.0.1'
    monkeypatch.setenv('MASTER_ADDR', '10.1.2.3')
    with pytest.raises(ValueError, match='not a loopback address'):
        world._use_loopback()


@pytest.mark.parametrize(
    ('addr', 'loop'), [('127.0.0.1', True), ('::1', True), ('localhost', True),
                       ('10.0.0.1', False), ('node-1', False)]
)  # fmt: skip
def test_is_loopback(addr, loop):
    assert world._is_loopback(addr) is loop


def test_auto_init_rpc_validates_arguments(monkeypatch):
    monkeypatch.setattr(world, '_worker_name_format', world.default_worker_name_format)
    with pytest.raises(TypeError, match='worker_name_format must be callable'):
        world.auto_init_rpc(None, 'worker{}')
    with pytest.raises(TypeError, match='worker_init_fn must be callable'):
        world.auto_init_rpc(3)
    with pytest.raises(ValueError, match='init_timeout'):
        world.auto_init_rpc(init_timeout=-1)


def test_auto_init_rpc_sets_name_format(monkeypatch):
    monkeypatch.setattr(world, '_worker_name_format', world.default_worker_name_format)
    world.auto_init_rpc(worker_name_format=lambda world_rank, **_: f'node-{world_rank}')
    assert WorldInfo(3, 4, 0, 1).worker_name == 'node-3'


def test_bounded_rendezvous_names_missing_ranks(monkeypatch):
    """A world of 3 where only this process (rank 0) arrives fails within the bound."""
    import time

    from _todist_launch import free_port

    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    monkeypatch.delenv('TORCHELASTIC_USE_AGENT_STORE', raising=False)
    start = time.monotonic()
    gen = world._bounded_env_rendezvous('torchopt-env://?rank=0&world_size=3&init_timeout=0.5')
    with pytest.raises(world.RendezvousTimeoutError, match=r'missing ranks \[1, 2\]'):
        next(gen)
    assert time.monotonic() - start < 5


def test_world_info_pickles():
    info = WorldInfo(1, 2, 1, 2)
    assert pickle.loads(pickle.dumps(info)) == info


_ARENAS_SCRIPT = """
import ctypes, sys, threading
from torchopt_distributed.world import limit_malloc_arenas
applied = limit_malloc_arenas(1) if sys.argv[1] == 'cap' else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
barrier = threading.Barrier(4)
def work():
    libc.malloc(4096)
    barrier.wait()  # all four threads hold their arena at once
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(applied, flush=True)
libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


_GLIBC_ONLY = pytest.mark.skipif(
    not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc',
    reason='mallopt() settings are glibc-specific',
)


def _python(code: str, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (malloc settings are per process)."""
    return subprocess.run(
        [sys.executable, '-c', code, *argv], env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip


def _env_without_malloc_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}


@_GLIBC_ONLY
def test_limit_malloc_arenas_caps_new_threads():
    arenas = {}
    for mode in ('cap', 'free'):
        out = _python(_ARENAS_SCRIPT, mode, env=_env_without_malloc_variables())
        assert out.stdout.strip() == ('True' if mode == 'cap' else 'False')
        arenas[mode] = out.stderr.count('Arena ')
    assert arenas['cap'] == 1 < arenas['free'], arenas


_TRIM_SCRIPT = """
import sys, torch
from torchopt_distributed.world import retain_freed_memory
applied = retain_freed_memory(1 << 30) if sys.argv[1] == 'keep' else False
def rss_mib():
    with open('/proc/self/status') as status:
        return next(int(l.split()[1]) for l in status if l.startswith('VmRSS:')) / 1024
def iteration():  # 256 MiB in 1 MiB tensors, touched, then freed
    tensors = [torch.empty(1 << 18).fill_(1.0) for _ in range(256)]
    del tensors
baseline = rss_mib()
for _ in range(3):  # the first ones also let glibc's moving mmap threshold settle
    iteration()
print(applied, round(rss_mib() - baseline))
"""


@_GLIBC_ONLY
def test_retain_freed_memory_keeps_freed_memory_resident():
    def kept_mib(mode: str) -> int:
        out = _python(_TRIM_SCRIPT, mode, env=_env_without_malloc_variables())
        applied, mib = out.stdout.split()
        assert applied == ('True' if mode == 'keep' else 'False')
        return int(mib)

    # With the setting, the 256 MiB freed by each iteration stays resident for the next one.
    assert kept_mib('keep') > 200
    # By default glibc returns freed memory at the top of the heap beyond its trim threshold
    # (which moves, but never past 64 MiB) to the OS, and the next iteration faults it back in.
    # Not in every process, though: about 1 in 5 keeps it all (the main heap's layout varies),
    # so look for a trimming process among a few. (Counting page faults instead is unreliable:
    # with transparent huge pages, faulting 256 MiB back in can take 128 faults.)
    assert any(kept_mib('free') < 100 for _ in range(6))


@_GLIBC_ONLY
@pytest.mark.parametrize(
    ('call', 'variable', 'value'),
    [('limit_malloc_arenas(1)', 'MALLOC_ARENA_MAX', '4'),
     ('retain_freed_memory(1 << 30)', 'MALLOC_TRIM_THRESHOLD_', '131072')],
)  # fmt: skip
def test_malloc_environment_variable_wins(call, variable, value):
    code = f'from torchopt_distributed import world; print(world.{call})'
    env = _env_without_malloc_variables()
    assert _python(code, env=env).stdout.strip() == 'True'
    assert _python(code, env={**env, variable: value}).stdout.strip() == 'False'


@pytest.mark.parametrize('bad', [0, -1, 1.5, True, '2'])
@pytest.mark.parametrize(
    ('argument', 'function'),
    [('malloc_arena_max', 'limit_malloc_arenas'),
     ('malloc_trim_threshold', 'retain_freed_memory')],
)  # fmt: skip
def test_malloc_arguments_are_validated(bad, argument, function):
    with pytest.raises(ValueError, match=f'{argument} must be a positive int or None'):
        world.auto_init_rpc(**{argument: bad})
    with pytest.raises(ValueError, match=argument):
        getattr(world, function)(bad)


# ----------------------------------------------------------------------------------------------
# Bad options fail clearly, before anything starts
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('kwargs', 'error', 'message'),
    [({'init_timeout': 'abc'}, TypeError, "init_timeout must be a number of seconds .*'abc'"),
     ({'init_timeout': True}, TypeError, 'init_timeout must be a number of seconds'),
     ({'init_timeout': float('inf')}, ValueError, 'init_timeout must be a positive, finite'),
     ({'init_timeout': float('nan')}, ValueError, 'init_timeout must be a positive, finite'),
     ({'init_timeout': 0}, ValueError, 'init_timeout must be a positive, finite'),
     ({'loopback': 'maybe'}, TypeError, "loopback must be True, False or None, got 'maybe'"),
     ({'loopback': 1}, TypeError, 'loopback must be True, False or None'),
     ({'tune_malloc': 'yes'}, TypeError, 'tune_malloc must be True, False or None'),
     ({'shutdown_timeout': 'abc'}, TypeError, 'shutdown_timeout must be a number of seconds'),
     ({'shutdown_timeout': 0}, ValueError, 'shutdown_timeout must be a positive, finite'),
     ({'shutdown_timeout': float('inf')}, ValueError, 'shutdown_timeout must be a positive')],
)  # fmt: skip
def test_auto_init_rpc_rejects_bad_options(monkeypatch, kwargs, error, message):
    monkeypatch.setattr(world, '_worker_name_format', world.default_worker_name_format)
    with pytest.raises(error, match=message):
        world.auto_init_rpc(**kwargs)


@pytest.mark.parametrize(
    ('variable', 'value', 'message'),
    [('TORCHOPT_RPC_INIT_TIMEOUT', 'inf', 'TORCHOPT_RPC_INIT_TIMEOUT must be a positive, finite'),
     ('TORCHOPT_RPC_INIT_TIMEOUT', 'nan', 'TORCHOPT_RPC_INIT_TIMEOUT must be a positive, finite'),
     ('TORCHOPT_RPC_INIT_TIMEOUT', '-1', 'TORCHOPT_RPC_INIT_TIMEOUT must be a positive, finite'),
     ('TORCHOPT_RPC_INIT_TIMEOUT', 'abc', 'TORCHOPT_RPC_INIT_TIMEOUT must be a number'),
     ('TORCHOPT_RPC_LOOPBACK', 'maybe', 'TORCHOPT_RPC_LOOPBACK must be 0 or 1'),
     ('TORCHOPT_RPC_TUNE_MALLOC', 'maybe', 'TORCHOPT_RPC_TUNE_MALLOC must be 0 or 1')],
)  # fmt: skip
def test_auto_init_rpc_rejects_bad_environment(monkeypatch, variable, value, message):
    monkeypatch.setattr(world, '_worker_name_format', world.default_worker_name_format)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=message):
        world.auto_init_rpc()


_MALLOC_CALLS_SCRIPT = """
import json, sys
from torchopt_distributed import world
calls = []
world.limit_malloc_arenas = lambda n: calls.append(['arena_max', n])
world.retain_freed_memory = lambda n: calls.append(['trim_threshold', n])
kwargs = json.loads(sys.argv[1])
world.auto_init_rpc(init_timeout=30, **kwargs)(lambda: None)()
print(json.dumps(calls))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ('kwargs', 'env', 'expected'),
    [({}, {}, []),
     ({'tune_malloc': True}, {}, [['arena_max', 1], ['trim_threshold', 1 << 30]]),
     ({}, {'TORCHOPT_RPC_TUNE_MALLOC': '1'}, [['arena_max', 1], ['trim_threshold', 1 << 30]]),
     ({'tune_malloc': False}, {'TORCHOPT_RPC_TUNE_MALLOC': '1'}, []),
     ({'tune_malloc': True, 'malloc_arena_max': 4}, {},
      [['arena_max', 4], ['trim_threshold', 1 << 30]]),
     ({'malloc_trim_threshold': 1 << 20}, {}, [['trim_threshold', 1 << 20]])],
    ids=['default-off', 'argument', 'environment', 'argument-wins', 'explicit-value', 'one-only'],
)  # fmt: skip
def test_malloc_tuning_is_opt_in(kwargs, env, expected):
    """auto_init_rpc leaves malloc alone unless asked (a world of one process really starts)."""
    import json

    from _todist_launch import free_port

    base = {
        k: v for k, v in _env_without_malloc_variables().items() if not k.startswith('TORCHOPT_')
    }
    full_env = {
        **base, 'RANK': '0', 'WORLD_SIZE': '1', 'LOCAL_RANK': '0',
        'LOCAL_WORLD_SIZE': '1', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(free_port()),
        'TP_SOCKET_IFNAME': 'lo', 'GLOO_SOCKET_IFNAME': 'lo', **env,
    }  # fmt: skip
    proc = subprocess.run(
        [sys.executable, '-c', _MALLOC_CALLS_SCRIPT, json.dumps(kwargs)],
        capture_output=True, text=True, timeout=100, env=full_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected
