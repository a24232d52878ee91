"""torchopt-accel benchmark: fused Adam kernels vs torch.optim.Adam (fused / foreach).

CPU (default, 1 intra-op thread): for the two trees of ``_trees.py`` it times, interleaved in one
process (median of many rounds), an Adam step by

* ``torch.optim.Adam(fused=True)`` and ``(foreach=True)`` (``step()``, the references);
* the raw multi-tensor op ``torchopt_accel.adam_step_`` (moments + direction in one pass);
* the raw op ``torchopt_accel.adam_apply_`` (moments, direction and parameter update in one
  pass: read p, g, m, v; write p, m, v);
* ``torchopt.adam(use_accelerated_op=True)`` functional in-place update + ``apply_updates``;
* ``torchopt.Adam(..., use_accelerated_op=True).step()`` (runs ``adam_apply_``; checked);
* ``torchopt.adam()`` without the kernels (core's foreach path), for comparison;

and prints each as a ratio to torch fused / foreach. Then a MetaAdam MAML outer iteration with
and without ``use_accelerated_op``. ``--device cuda`` times the same step rows on the GPU
(CUDA events) and reports the achieved memory bandwidth of the raw ops (``adam_step_``: 6 tensor
passes, read g, m, v, write u, m, v; ``adam_apply_``: 7) and of torch's fused Adam (7 passes:
read p, g, m, v; write p, m, v).

    python benchmarks/accel_bench.py [--rounds 40] [--quick] [--device cuda] [--no-maml]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _trees import TREES, make_tree  # noqa: E402

import torchopt  # noqa: E402

__all__ = ['main']

LR = 1e-3


def _runners(leaves: list[torch.Tensor], device: str) -> dict:
    import torchopt_accel

    def params():
        ps = [p.to(device).clone().requires_grad_() for p in leaves]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-2
        return ps

    runners = {}
    ps_fu = params()
    runners['torch.optim.Adam fused'] = torch.optim.Adam(ps_fu, lr=LR, fused=True).step
    ps_fe = params()
    runners['torch.optim.Adam foreach'] = torch.optim.Adam(ps_fe, lr=LR, foreach=True).step

    g = [torch.randn_like(p, device=device) * 1e-2 for p in leaves]
    m = [torch.zeros_like(t) for t in g]
    v = [torch.zeros_like(t) for t in g]
    count = [0]

    g_src = [t.clone() for t in g]

    def raw_op():
        count[0] += 1
        torchopt_accel.adam_step_(g, m, v, 0.9, 0.999, 1e-8, 0.0, count[0])

    raw_op.prepare = lambda: torch._foreach_copy_(g, g_src)  # type: ignore[attr-defined]
    runners['torchopt_accel.adam_step_ (op only)'] = raw_op

    p_raw = [torch.randn_like(t) for t in g]
    g_raw = [torch.randn_like(t) * 1e-2 for t in g]
    m_raw = [torch.zeros_like(t) for t in g]
    v_raw = [torch.zeros_like(t) for t in g]
    count_apply = [0]

    def raw_apply():
        count_apply[0] += 1
        torchopt_accel.adam_apply_(
            p_raw, g_raw, m_raw, v_raw, LR, 0.9, 0.999, 1e-8, 0.0, count_apply[0]
        )

    runners['torchopt_accel.adam_apply_ (op only)'] = raw_apply

    for label, accel in (('accel', True), ('core foreach', False)):
        ps = [p.detach().clone() for p in params()]
        grads_src = [torch.randn_like(p) * 1e-2 for p in ps]
        grads = [t.clone() for t in grads_src]
        impl = torchopt.adam(LR, use_accelerated_op=accel)
        state = [impl.init(ps)]

        def functional(impl=impl, state=state, ps=ps, grads=grads):
            updates, state[0] = impl.update(grads, state[0], params=ps, inplace=True)
            torchopt.apply_updates(ps, updates, inplace=True)

        # The in-place update writes the step into the gradients: refresh them before every
        # timed call, outside the timed region (as benchmarks/optimizer_step.py does).
        functional.prepare = (  # type: ignore[attr-defined]
            lambda grads=grads, grads_src=grads_src: torch._foreach_copy_(grads, grads_src)
        )
        runners[f'torchopt.adam {label} (update + apply_updates)'] = functional

    ps_c = params()
    step = torchopt.Adam(ps_c, lr=LR, use_accelerated_op=True).step
    _check_step_runs_adam_apply(step)
    runners['torchopt.Adam accel step()'] = step
    return runners


def _check_step_runs_adam_apply(step) -> None:  # noqa: ANN001
    """Fail loudly unless ``step()`` is one ``torchopt_accel::adam_apply_`` call per group."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func.namespace == 'torchopt_accel':
                self.names.append(func.__name__.split('.')[0])
            return func(*args, **(kwargs or {}))

    with Ops() as ops:
        step()
    if ops.names != ['adam_apply_']:
        sys.exit(
            f'torchopt.Adam(use_accelerated_op=True).step() ran {ops.names}, '
            'expected one torchopt_accel::adam_apply_ call'
        )


def _time(fn, device: str) -> float:
    if device == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_steps(tree: str, rounds: int, device: str) -> dict[str, float]:
    n, total = TREES[tree]
    runners = _runners(make_tree(n, total), device)
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.no_grad():
        for f in runners.values():
            for _ in range(3):
                getattr(f, 'prepare', lambda: None)()
                f()
        for _ in range(rounds):
            for k, f in runners.items():
                getattr(f, 'prepare', lambda: None)()  # untimed: fresh consumed gradients
                times[k].append(_time(f, device))
    return {k: statistics.median(v) for k, v in times.items()}


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def bench_maml(rounds: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    base = _net()

    def iteration(accel: bool):
        net = copy.deepcopy(base)
        opt = torchopt.MetaAdam(net, lr=1e-2, eps_root=1e-10, use_accelerated_op=accel)
        for _ in range(5):
            opt.step(F.cross_entropy(net(x), y))
        F.cross_entropy(net(x), y).backward()

    times = {True: [], False: []}
    for accel in times:
        iteration(accel)
    for _ in range(rounds):
        for accel in times:
            t0 = time.perf_counter()
            iteration(accel)
            times[accel].append(time.perf_counter() - t0)
    return {
        ('with accel' if k else 'without accel'): statistics.median(v) for k, v in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=40)
    parser.add_argument('--quick', action='store_true', help='few rounds, small tree only')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--no-maml', action='store_true')
    args = parser.parse_args()
    import torchopt_accel

    torch.set_num_threads(1)
    if args.device == 'cuda' and not torchopt.accelerated_op_available('cuda'):
        sys.exit('CUDA kernels unavailable: ' + repr(torchopt_accel.build_info()))
    trees = list(TREES)[1:] if args.quick else list(TREES)
    rounds = 5 if args.quick else args.rounds
    info = torchopt_accel.build_info()
    dev = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU {info["cpu_capability"]}'
    print(f'torch {torch.__version__}, {dev}, 1 thread, median of {rounds} interleaved rounds')
    print()
    print('| tree | path | time (ms) | vs torch fused | vs torch foreach | GB/s |')
    print('|---|---|---:|---:|---:|---:|')
    for tree in trees:
        res = bench_steps(tree, rounds, args.device)
        fused, foreach = res['torch.optim.Adam fused'], res['torch.optim.Adam foreach']
        n_elem = TREES[tree][1]
        for k, t in res.items():
            passes = (
                6
                if 'adam_step_' in k
                else 7
                if 'adam_apply_' in k or k == 'torch.optim.Adam fused'
                else None
            )
            bw = f'{passes * 4 * n_elem / t / 1e9:.0f}' if passes else ''
            print(
                f'| {tree} | {k} | {t * 1e3:.3f} | {t / fused:.2f}x | {t / foreach:.2f}x | {bw} |'
            )
    if args.device == 'cpu' and not args.no_maml:
        res = bench_maml(max(3, rounds // 4))
        ref = res['without accel']
        print()
        print('| MetaAdam MAML iteration (MLP 32-256-256-10, 5 inner steps) | time (ms) | ratio |')
        print('|---|---:|---:|')
        for k, t in res.items():
            print(f'| {k} | {t * 1e3:.2f} | {t / ref:.2f}x |')


if __name__ == '__main__':
    main()
