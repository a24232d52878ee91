"""Long unrolls: memory and time of ``torchopt.unroll`` with and without checkpoints (1 thread).

MLP 32-256-256-256-10, batch 64, Adam inside the step, K inner steps (batches cycled from a
pool of 8), then the outer loss on a query batch and its backward to the initial parameters
(MAML's outer iteration). Two ways to write the step:

* ``functional``: ``torch.func.functional_call`` + ``torchopt.adam(inplace=False)`` in a
  ``step(carry, t)`` given to ``torchopt.unroll``;
* ``module``: ``torchopt.MetaAdam(net)`` stepped by ``torchopt.unroll_module``.

For every (API, K, checkpoints) a fresh subprocess measures, for one outer iteration,

* the peak resident memory over the process's baseline (after imports, model and data; the
  kernel's high-water mark is reset there through ``/proc/self/clear_refs``);
* the bytes held for backward: unique tensor storages that the graph holds when the forward
  pass ends (``saved_tensors_hooks``, a second iteration), with the carries that a checkpointed
  unroll keeps;
* the time of that (cold) iteration.

Then the time of one outer iteration is measured in a fresh subprocess per (API, K), the three
settings interleaved round by round (order rotated; K = 1000 runs one round): the median
wall-clock time, and the median over rounds of the ratio to the same round's full unroll in
process CPU time (one thread).

    python benchmarks/long_unroll.py [--rounds 7] [--ks 20,100,1000] [--api functional,module]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import torchopt

LR, EPS_ROOT = 1e-3, 1e-10
MODES: dict[str, Any] = {'full': None, 'c=16': 16, 'sqrt': 'sqrt'}


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(8, 64, 32, generator=g),
        torch.randint(0, 10, (8, 64), generator=g),
        torch.randn(64, 32, generator=g),
        torch.randint(0, 10, (64,), generator=g),
    )


def functional_iteration(net: nn.Module, data, k: int, checkpoints: Any) -> torch.Tensor:
    """The outer loss after K functional Adam steps (differentiable in the initial params)."""
    xs, ys, xq, yq = data
    opt = torchopt.adam(LR, eps_root=EPS_ROOT, moment_requires_grad=True)

    def step(carry, t):
        params, state = carry
        loss = F.cross_entropy(torch.func.functional_call(net, params, (xs[t % 8],)), ys[t % 8])
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        updates, state = opt.update(dict(zip(params, grads)), state, inplace=False)
        return torchopt.apply_updates(params, updates, inplace=False), state

    params = dict(net.named_parameters())
    final, _ = torchopt.unroll(step, (params, opt.init(params)), k, checkpoints=checkpoints)
    return F.cross_entropy(torch.func.functional_call(net, final, (xq,)), yq)


def module_iteration(net: nn.Module, data, k: int, checkpoints: Any) -> torch.Tensor:
    """The outer loss after K ``MetaAdam`` steps on the module (restored after backward)."""
    xs, ys, xq, yq = data
    module_iteration.snapshot = torchopt.extract_state_dict(net)
    opt = torchopt.MetaAdam(net, lr=LR, eps_root=EPS_ROOT)
    torchopt.unroll_module(
        net, opt, lambda t: F.cross_entropy(net(xs[t % 8]), ys[t % 8]), k, checkpoints=checkpoints
    )
    return F.cross_entropy(net(xq), yq)


ITERATIONS = {'functional': functional_iteration, 'module': module_iteration}


def outer_iteration(api: str, net: nn.Module, data, k: int, checkpoints: Any) -> None:
    loss = ITERATIONS[api](net, data, k, checkpoints)
    loss.backward()
    if api == 'module':
        torchopt.recover_state_dict(net, module_iteration.snapshot)
    net.zero_grad(set_to_none=True)


def rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def reset_peak() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Held:
    """A saved tensor, counted while the graph holds it."""

    live: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t.detach()  # not ``t``: a saved output would hold its own node (a cycle)
        _Held.live.add(self)


def kept_carries(loss: torch.Tensor) -> list[torch.Tensor]:
    """The tensors of the carries a checkpointed unroll keeps for its backward pass.

    They are held by the unroll's autograd node (its ``engine``, a private detail read here
    only to count them), not by ``save_for_backward``, so the hooks above do not see them.
    """
    found, stack, seen = [], [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        engine = getattr(node, 'engine', None)
        if engine is not None:
            for state in engine.stored.values():
                found += [x for x in state.leaves if isinstance(x, torch.Tensor)]
        stack.extend(nxt for nxt, _ in node.next_functions)
    return found


def saved_bytes(api: str, net: nn.Module, data, k: int, checkpoints: Any) -> int:
    """Unique storages saved for backward and still held when the forward pass ends."""

    def pack(t: torch.Tensor) -> _Held:
        return _Held(t)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        loss = ITERATIONS[api](net, data, k, checkpoints)
    storages = {}
    for t in [held.t for held in list(_Held.live)] + kept_carries(loss):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    total = sum(storages.values())
    loss.backward()
    if api == 'module':
        torchopt.recover_state_dict(net, module_iteration.snapshot)
    net.zero_grad(set_to_none=True)
    return total


def child(api: str, k: int, mode: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    net, data = make_net(), make_data()
    base = rss_bytes()
    exact = reset_peak()
    start = time.perf_counter()
    outer_iteration(api, net, data, k, MODES[mode])
    seconds = time.perf_counter() - start
    peak = peak_bytes() - base
    return {
        'peak': peak,
        'exact_peak': exact,
        'seconds': seconds,
        'saved': saved_bytes(api, net, data, k, MODES[mode]),
    }


def measure_memory(api: str, k: int, mode: str) -> dict[str, Any]:
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(
        [sys.executable, __file__, '--child', api, str(k), mode],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_child(api: str, k: int, rounds: int) -> dict[str, Any]:
    """Outer-iteration times of every mode, interleaved round by round (rotating the order).

    Wall-clock medians, and the median over rounds of each mode's ratio to the same round's
    full unroll in process CPU time (one thread: the work done, less disturbed than wall time
    by the other processes of a shared machine).
    """
    torch.set_num_threads(1)
    net, data = make_net(), make_data()
    for mode in MODES:  # warm-up
        outer_iteration(api, net, data, min(k, 5), MODES[mode])
    modes = list(MODES)
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
            w, c = time.perf_counter(), time.process_time()
            outer_iteration(api, net, data, k, MODES[mode])
            cpu[mode].append(time.process_time() - c)
            wall[mode].append(time.perf_counter() - w)
    return {
        'median': {m: statistics.median(v) for m, v in wall.items()},
        'ratio': {
            m: statistics.median(a / b for a, b in zip(v, cpu['full'])) for m, v in cpu.items()
        },
    }


def measure_time(api: str, k: int, rounds: int) -> dict[str, Any]:
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(
        [sys.executable, __file__, '--time-child', api, str(k), str(rounds)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mb(n: float) -> str:
    return f'{n / 2**20:.1f} MB'


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--ks', default='20,100,1000')
    parser.add_argument('--api', default='functional,module')
    parser.add_argument('--child', nargs=3, metavar=('API', 'K', 'MODE'), help=argparse.SUPPRESS)
    parser.add_argument(
        '--time-child', nargs=3, metavar=('API', 'K', 'ROUNDS'), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        api, k, mode = args.child
        print(json.dumps(child(api, int(k), mode)))
        return
    if args.time_child:
        api, k, rounds = args.time_child
        print(json.dumps(time_child(api, int(k), int(rounds))))
        return
    ks = [int(k) for k in args.ks.split(',')]
    apis = args.api.split(',')
    rows = []
    for api in apis:
        for k in ks:
            mem = {m: measure_memory(api, k, m) for m in MODES}
            timed = measure_time(api, k, 1 if k >= 1000 else args.rounds)
            for m in MODES:
                t, ratio = timed['median'][m], timed['ratio'][m]
                rows.append((api, k, m, mem[m], t, ratio))
                print(
                    f'{api:10s} K={k:5d} {m:5s} peak {mb(mem[m]["peak"]):>10s} held '
                    f'{mb(mem[m]["saved"]):>10s} time {t:.3f} s ({ratio:.2f}x)',
                    flush=True,
                )
    print()
    print('| API | K | checkpoints | peak RSS over baseline | held for backward | time | vs full |')
    print('|---|---:|---|---:|---:|---:|---:|')
    for api, k, m, mem, t, ratio in rows:
        print(
            f'| {api} | {k} | {m} | {mb(mem["peak"])} | {mb(mem["saved"])} | {t:.2f} s | '
            f'{ratio:.2f}x |'
        )
    by = {(api, k, m): (mem, ratio) for api, k, m, mem, _, ratio in rows}
    for api in apis:
        if (api, 1000, 'c=16') in by and (api, 20, 'full') in by:
            a, b = by[api, 1000, 'c=16'][0]['peak'], by[api, 20, 'full'][0]['peak']
            print(
                f'{api}: K=1000 c=16 peak {mb(a)} vs K=20 full {mb(b)}: '
                f'{"met" if a <= b else "NOT met"}'
            )
        if (api, 100, 'sqrt') in by:
            r = by[api, 100, 'sqrt'][1]
            print(f'{api}: K=100 sqrt time {r:.2f}x full: {"met" if r <= 2.5 else "NOT met"}')


if __name__ == '__main__':
    main()
