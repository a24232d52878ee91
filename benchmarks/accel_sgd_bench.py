"""torchopt-accel benchmark: the in-place momentum-SGD update ``sgd_update_`` (issue #16).

The functional in-place momentum-SGD step (``torchopt.sgd(lr, momentum=0.9).update(grads, state,
inplace=True)`` then ``torchopt.apply_updates``) has a byte floor of 28 B per float32 parameter:
the update reads g and b and writes b and g (16 B), the apply reads p and u and writes p (12 B).
torch's fused SGD step (``torch._fused_sgd_``: read p, g, b; write p, b) moves 20 B, so the
target is at most 28 / 20 = 1.4x its time. For the two trees of ``_trees.py`` this times, on one
CPU thread, interleaved in one process (median of many rounds, fresh gradients copied in before
every timed call, outside the timed region):

* ``torch._fused_sgd_`` (the reference; momentum 0.9, not the first step);
* ``torchopt_accel.sgd_update_`` then ``torch._foreach_add_(params, grads)`` (the floor path);
* ``sgd_update_`` alone (16 B per parameter: 0.8x the reference at the floor);
* ``torchopt.sgd(lr, momentum=0.9)`` ``update(inplace=True)`` + ``apply_updates`` (core as it is);

and prints each as a ratio to the reference (the median of the per-round ratios) and its
achieved bandwidth.

    python benchmarks/accel_sgd_bench.py [--rounds 40] [--quick]
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

__all__ = ['main']

LR, MOMENTUM = 1e-2, 0.9
REFERENCE = 'torch._fused_sgd_'


def _runners(leaves: list[torch.Tensor]) -> tuple[dict, list[torch.Tensor]]:
    """``({path: (step, its gradient list, bytes per parameter)}, fresh gradients)``."""
    import torchopt_accel

    fresh = [torch.randn_like(p) * 1e-2 for p in leaves]
    new = lambda: [p.clone() for p in leaves]  # noqa: E731
    runners: dict[str, tuple] = {}

    p_fu, g_fu, b_fu = new(), [g.clone() for g in fresh], [torch.randn_like(p) for p in leaves]

    def fused() -> None:
        torch._fused_sgd_(
            p_fu,
            g_fu,
            b_fu,
            weight_decay=0.0,
            momentum=MOMENTUM,
            lr=LR,
            dampening=0.0,
            nesterov=False,
            maximize=False,
            is_first_step=False,
        )

    runners[REFERENCE] = (fused, g_fu, 20)

    p_op, g_op, b_op = new(), [g.clone() for g in fresh], [torch.randn_like(p) for p in leaves]

    def accel_step() -> None:
        torchopt_accel.sgd_update_(g_op, b_op, lr=LR, momentum=MOMENTUM)
        torch._foreach_add_(p_op, g_op)

    runners['sgd_update_ + _foreach_add_'] = (accel_step, g_op, 28)

    g_only, b_only = [g.clone() for g in fresh], [torch.randn_like(p) for p in leaves]

    def update_only() -> None:
        torchopt_accel.sgd_update_(g_only, b_only, lr=LR, momentum=MOMENTUM)

    runners['sgd_update_ alone'] = (update_only, g_only, 16)

    p_co, g_co = new(), [g.clone() for g in fresh]
    impl = torchopt.sgd(LR, momentum=MOMENTUM)
    state = [impl.init(p_co)]

    def core() -> None:
        updates, state[0] = impl.update(g_co, state[0], params=p_co, inplace=True)
        torchopt.apply_updates(p_co, updates, inplace=True)

    runners['torchopt.sgd update(inplace) + apply_updates'] = (core, g_co, None)
    return runners, fresh


def bench(tree: str, rounds: int) -> dict[str, tuple[float, float, int | None]]:
    """``{path: (median seconds, median ratio to the reference, bytes per parameter)}``."""
    n, total = TREES[tree]
    runners, fresh = _runners(make_tree(n, total))
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.no_grad():
        for fn, grads, _ in runners.values():
            for _ in range(3):
                torch._foreach_copy_(grads, fresh)
                fn()
        for _ in range(rounds):
            for k, (fn, grads, _) in runners.items():
                torch._foreach_copy_(grads, fresh)  # untimed: each call sees a new gradient
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    ref = times[REFERENCE]
    return {
        k: (statistics.median(v), statistics.median(a / b for a, b in zip(v, ref)), runners[k][2])
        for k, v in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=40)
    parser.add_argument('--quick', action='store_true', help='few rounds, small tree only')
    args = parser.parse_args()
    import torchopt_accel

    torch.set_num_threads(1)
    trees = list(TREES)[1:] if args.quick else list(TREES)
    rounds = 5 if args.quick else args.rounds
    cap = torchopt_accel.build_info()['cpu_capability']
    print(
        f'torch {torch.__version__}, CPU {cap}, 1 thread, float32, momentum {MOMENTUM}, '
        f'median of {rounds} interleaved rounds'
    )
    print()
    print(f'| tree | path | time (ms) | vs {REFERENCE} | B/param | GB/s |')
    print('|---|---|---:|---:|---:|---:|')
    for tree in trees:
        res = bench(tree, rounds)
        n_elem = TREES[tree][1]
        for k, (t, ratio, per) in res.items():
            bw = f'{per * n_elem / t / 1e9:.1f}' if per else ''
            print(f'| {tree} | {k} | {t * 1e3:.3f} | {ratio:.2f}x | {per or ""} | {bw} |')


if __name__ == '__main__':
    main()
