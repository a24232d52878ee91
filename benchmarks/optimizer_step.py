"""Optimizer-step benchmark: torchopt vs torch.optim (foreach and fused), 1 thread.

For each tree and optimizer it times, interleaved in one process (median of many rounds):
the functional in-place step (``update(..., inplace=True)`` + ``apply_updates``, also with
``use_accelerated_op=True`` for Adam/AdamW), the class ``step()`` (also with a
``CosineAnnealingLR`` scheduler, compared with torch's fused step with the same scheduler),
the differentiable functional step (``inplace=False``), and torch.optim with ``foreach=True``
and ``fused=True``. Ratios < 1 mean torchopt is faster.

    python benchmarks/optimizer_step.py [--rounds 30] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _trees import TREES, make_tree  # noqa: E402

import torchopt  # noqa: E402

OPTIMIZERS = {
    'adam': (lambda: torchopt.adam(1e-3), torchopt.Adam, torch.optim.Adam, dict(lr=1e-3)),
    'adamw': (lambda: torchopt.adamw(1e-3), torchopt.AdamW, torch.optim.AdamW, dict(lr=1e-3)),
    'adamw(amsgrad)': (
        lambda: torchopt.adamw(1e-3, amsgrad=True),
        lambda p, **kw: torchopt.AdamW(p, amsgrad=True, **kw),
        lambda p, **kw: torch.optim.AdamW(p, amsgrad=True, **kw),
        dict(lr=1e-3),
    ),
    'sgd(momentum)': (
        lambda: torchopt.sgd(1e-3, momentum=0.9),
        lambda p, **kw: torchopt.SGD(p, momentum=0.9, **kw),
        lambda p, **kw: torch.optim.SGD(p, momentum=0.9, **kw),
        dict(lr=1e-3),
    ),
}

# Issue #20: functional optimizers (no torchopt class yet). (factory, torch.optim class, kwargs for
# torch.optim, whether torch has a foreach / fused implementation, the trees to run on.)
# Adafactor and Muon optimize matrices; Muon's Newton-Schulz matmuls are too slow for the 10M tree
# on one thread.
FUNCTIONAL_ONLY = {
    'amsgrad': (
        lambda: torchopt.amsgrad(1e-3),
        torch.optim.Adam,
        dict(lr=1e-3, amsgrad=True),
        True,
        True,
        'flat',
    ),
    'adafactor': (lambda: torchopt.adafactor(), torch.optim.Adafactor, {}, True, False, 'matrix'),
    'rprop': (lambda: torchopt.rprop(), torch.optim.Rprop, {}, True, False, 'flat'),
    'asgd': (lambda: torchopt.asgd(), torch.optim.ASGD, {}, True, False, 'flat'),
    'muon': (lambda: torchopt.muon(), torch.optim.Muon, {}, False, False, 'matrix-small'),
    # RMSprop's and Adagrad's class steps run torch.optim's op sequence (bit for bit:
    # torchopt._exact_steps), so they are also timed against torch's single-tensor step.
    'rmsprop(momentum)': (
        lambda: torchopt.rmsprop(1e-3, momentum=0.9),
        torch.optim.RMSprop,
        dict(lr=1e-3, momentum=0.9),
        True,
        False,
        'flat',
        lambda p, **kw: torchopt.RMSProp(p, **kw),
    ),
    'adagrad': (
        lambda: torchopt.adagrad(1e-2),
        torch.optim.Adagrad,
        dict(lr=1e-2),
        True,
        True,
        'flat',
        lambda p, **kw: torchopt.AdaGrad(p, **kw),
    ),
}


def _matrices(leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """The leaves as near-square matrices (elements beyond ``rows * cols`` dropped)."""
    out = []
    for x in leaves:
        rows = max(int(x.numel() ** 0.5), 1)
        cols = max(x.numel() // rows, 1)
        out.append(x[: rows * cols].reshape(rows, cols) if x.numel() >= rows * cols
                   else x.reshape(1, -1))  # fmt: skip
    return out


def _functional_runners(name: str, leaves: list[torch.Tensor]) -> dict:
    fn, torch_cls, kw, has_foreach, has_fused, _, *cls = FUNCTIONAL_ONLY[name]
    grads_src = [torch.randn_like(p) * 1e-2 for p in leaves]

    def clone():
        ps = [p.clone().requires_grad_() for p in leaves]
        for p, g in zip(ps, grads_src):
            p.grad = g.clone()
        return ps

    runners = {}
    ps_f = [p.detach().clone() for p in leaves]
    impl = fn()
    state = [impl.init(ps_f)]
    grads_f = [g.clone() for g in grads_src]

    def refresh():  # the in-place update consumes the gradients (untimed: see _bench_functional)
        torch._foreach_copy_(grads_f, grads_src)

    def functional_inplace():
        updates, state[0] = impl.update(grads_f, state[0], params=ps_f, inplace=True)
        torchopt.apply_updates(ps_f, updates, inplace=True)

    functional_inplace.prepare = refresh  # type: ignore[attr-defined]
    runners['torchopt functional in-place'] = functional_inplace

    ps_d = [p.detach().clone() for p in leaves]
    impl_d = fn()
    state_d = [impl_d.init(ps_d)]

    def functional_diff():
        updates, new_state = impl_d.update(grads_src, state_d[0], params=ps_d, inplace=False)
        torchopt.apply_updates(ps_d, updates, inplace=False)
        state_d[0] = new_state

    runners['torchopt differentiable (inplace=False)'] = functional_diff
    if cls:
        runners['torchopt class step()'] = cls[0](clone(), **kw).step
        runners['torch.optim single-tensor'] = torch_cls(clone(), foreach=False, **kw).step
    if has_foreach:
        runners['torch.optim foreach'] = torch_cls(clone(), foreach=True, **kw).step
    else:
        runners['torch.optim foreach'] = torch_cls(clone(), **kw).step  # single tensor only
    if has_fused:
        runners['torch.optim fused'] = torch_cls(clone(), fused=True, **kw).step
    return runners


def _runners(name: str, leaves: list[torch.Tensor]) -> dict:
    fn, cls, torch_cls, kw = OPTIMIZERS[name]

    def clone():
        ps = [p.clone().requires_grad_() for p in leaves]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-2
        return ps

    grads_src = [torch.randn_like(p) * 1e-2 for p in leaves]
    runners = {}

    # functional in-place: the gradients are consumed, so refresh them (copy cost excluded below)
    ps_f = clone()
    impl = fn()
    state = [impl.init(ps_f)]
    grads_f = [g.clone() for g in grads_src]

    def functional_inplace():
        updates, state[0] = impl.update(grads_f, state[0], params=ps_f, inplace=True)
        torchopt.apply_updates(ps_f, updates, inplace=True)

    runners['torchopt functional in-place'] = functional_inplace

    ps_c = clone()
    opt_c = cls(ps_c, **kw)
    runners['torchopt class step()'] = opt_c.step

    ps_d = [p.detach().clone() for p in leaves]
    impl_d = fn()
    state_d = [impl_d.init(ps_d)]

    def functional_diff():
        updates, new_state = impl_d.update(grads_src, state_d[0], params=ps_d, inplace=False)
        torchopt.apply_updates(ps_d, updates, inplace=False)
        state_d[0] = new_state

    runners['torchopt differentiable (inplace=False)'] = functional_diff

    if name in ('adam', 'adamw'):  # use_accelerated_op=True (torchopt-accel installed)
        ps_a = clone()
        impl_a = getattr(torchopt, name)(1e-3, use_accelerated_op=True)
        state_a = [impl_a.init(ps_a)]
        grads_a = [g.clone() for g in grads_src]

        def functional_accel():
            updates, state_a[0] = impl_a.update(grads_a, state_a[0], params=ps_a, inplace=True)
            torchopt.apply_updates(ps_a, updates, inplace=True)

        runners['torchopt functional in-place (accel)'] = functional_accel

    # with an lr scheduler attached (the lr is read at every step, nothing is rebuilt)
    ps_s = clone()
    opt_s = cls(ps_s, **kw)
    sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=1000)

    def class_with_scheduler():
        opt_s.step()
        sched_s.step()

    runners['torchopt class step() + CosineAnnealingLR'] = class_with_scheduler
    ps_r = clone()
    opt_r = torch_cls(ps_r, fused=True, **kw)
    sched_r = torch.optim.lr_scheduler.CosineAnnealingLR(opt_r, T_max=1000)

    def torch_with_scheduler():
        opt_r.step()
        sched_r.step()

    runners['torch.optim fused + CosineAnnealingLR'] = torch_with_scheduler

    ps_t = clone()
    opt_t = torch_cls(ps_t, foreach=True, **kw)
    runners['torch.optim foreach'] = opt_t.step

    ps_u = clone()
    opt_u = torch_cls(ps_u, fused=True, **kw)
    runners['torch.optim fused'] = opt_u.step
    return runners


def bench(tree: str, name: str, rounds: int) -> dict[str, float]:
    n, total = TREES[tree]
    leaves = make_tree(n, total)
    if name in FUNCTIONAL_ONLY:
        if FUNCTIONAL_ONLY[name][5].startswith('matrix'):
            leaves = _matrices(leaves)
        runners = _functional_runners(name, leaves)
    else:
        runners = _runners(name, leaves)
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.no_grad():
        for f in runners.values():  # warm up
            for _ in range(3):
                getattr(f, 'prepare', lambda: None)()
                f()
        for _ in range(rounds):
            for k, f in runners.items():  # interleaved
                getattr(f, 'prepare', lambda: None)()  # untimed set-up (fresh gradients)
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=30)
    parser.add_argument('--quick', action='store_true', help='few rounds, small tree only')
    parser.add_argument('--only', nargs='*', default=None, help='optimizer names to run')
    args = parser.parse_args()
    torch.set_num_threads(1)
    trees = list(TREES)[1:] if args.quick else list(TREES)
    rounds = 5 if args.quick else args.rounds
    print(
        f'torch {torch.__version__}, torchopt {torchopt.__version__}, 1 thread, median of {rounds}'
    )
    print()
    print('| tree | optimizer | torchopt path | time (ms) | vs torch foreach | vs torch fused |')
    print('|---|---|---|---:|---:|---:|')
    names = [n for n in (*OPTIMIZERS, *FUNCTIONAL_ONLY) if args.only is None or n in args.only]
    for tree in trees:
        for name in names:
            if name in FUNCTIONAL_ONLY:
                _functional_rows(tree, name, rounds)
                continue
            res = bench(tree, name, rounds)
            ref_fe, ref_fu = res['torch.optim foreach'], res['torch.optim fused']
            for k, v in res.items():
                if k.startswith('torch.optim'):
                    continue
                fused = ref_fu
                if k.endswith('CosineAnnealingLR'):  # against torch fused with the same scheduler
                    fused = res['torch.optim fused + CosineAnnealingLR']
                print(
                    f'| {tree} | {name} | {k} | {v * 1e3:.2f} | {v / ref_fe:.2f}x | {v / fused:.2f}x |'
                )
            print(
                f'| {tree} | {name} | (torch.optim foreach / fused) '
                f'| {ref_fe * 1e3:.2f} / {ref_fu * 1e3:.2f} | 1.00x | |'
            )
            sys.stdout.flush()


def _functional_rows(tree: str, name: str, rounds: int) -> None:
    """The rows of a functional-only optimizer (no class; torch fused where torch has it)."""
    if FUNCTIONAL_ONLY[name][5] == 'matrix-small' and tree != list(TREES)[-1]:
        return
    res = bench(tree, name, rounds)
    ref_fe, ref_fu = res['torch.optim foreach'], res.get('torch.optim fused')
    label = name if FUNCTIONAL_ONLY[name][3] else f'{name} (torch: single-tensor)'
    for k, v in res.items():
        if k.startswith('torch.optim'):
            continue
        fused = f'{v / ref_fu:.2f}x' if ref_fu else '—'
        print(f'| {tree} | {label} | {k} | {v * 1e3:.2f} | {v / ref_fe:.2f}x | {fused} |')
    fu = f'{ref_fu * 1e3:.2f}' if ref_fu else '—'
    single = res.get('torch.optim single-tensor')
    if single:
        cls_t = res['torchopt class step()']
        print(f'| {tree} | {label} | (class step() vs torch.optim single-tensor {single * 1e3:.2f}) '
              f'| {cls_t * 1e3:.2f} | {cls_t / single:.2f}x | |')  # fmt: skip
    print(
        f'| {tree} | {label} | (torch.optim foreach / fused) | {ref_fe * 1e3:.2f} / {fu} | 1.00x | |'
    )
    sys.stdout.flush()


if __name__ == '__main__':
    main()
