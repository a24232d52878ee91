"""``torch.compile`` step benchmark: torchopt compiled vs eager vs torch.optim compiled, 1 thread.

For Adam, AdamW and SGD with momentum, on a small MLP and the two trees of
``benchmarks/optimizer_step.py``, it times (interleaved in one process, median of many rounds):

* ``torchopt`` class ``step()`` eagerly;
* the same ``step()`` under ``torch.compile(fullgraph=True)`` (inductor);
* the same, with inductor's ``size_asserts`` option off (``docs/torch_compile.md`` says when
  that is safe): inductor then skips its check of every input's size and strides per call;
* ``torch.optim``'s ``step()`` under ``torch.compile`` (inductor, default implementation).
  torch.optim's ``step`` breaks the graph on its ``_use_grad_for_differentiable`` wrapper, so
  it is compiled without ``fullgraph``, the way torch's own tutorial does it.

Ratios < 1 mean the compiled torchopt step is faster. The goal of issue #21: compiled /
eager <= 1 and compiled / torch.optim compiled <= 1.1.

    python benchmarks/compile_step.py [--rounds 30] [--quick] [--only adam ...] [--trees mlp b]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _trees import TREES, make_tree  # noqa: E402

import torchopt  # noqa: E402

OPTIMIZERS: dict[str, tuple[Callable, Callable]] = {
    'adam': (
        lambda p: torchopt.Adam(p, lr=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-3),
    ),
    'adamw': (
        lambda p: torchopt.AdamW(p, lr=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-3),
    ),
    'sgd(momentum)': (
        lambda p: torchopt.SGD(p, lr=1e-3, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9),
    ),
}
MLP = 'mlp: 6 tensors / 265k (256-512-256-10)'
PATHS = ('torchopt eager', 'torchopt compiled', 'no size asserts', 'torch.optim compiled')
NO_SIZE_ASSERTS = {'size_asserts': False}


def _mlp_leaves() -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                        nn.Linear(256, 10))  # fmt: skip
    return [p.detach() for p in net.parameters()]


def _leaves(tree: str) -> list[torch.Tensor]:
    if tree == MLP:
        return _mlp_leaves()
    return make_tree(*TREES[tree])


def _params(leaves: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Fresh parameters with fixed gradients (each path gets its own copy)."""
    g = torch.Generator().manual_seed(seed)
    params = [p.clone().requires_grad_() for p in leaves]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-2
    return params


def _runners(name: str, leaves: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
    make_ours, make_torch = OPTIMIZERS[name]
    eager = make_ours(_params(leaves, 1))
    ours = make_ours(_params(leaves, 1))
    unchecked = make_ours(_params(leaves, 1))
    theirs = make_torch(_params(leaves, 1))
    return {
        'torchopt eager': eager.step,
        'torchopt compiled': torch.compile(ours.step, fullgraph=True),
        # through a lambda: ``step``'s code then holds one cache entry (``ours``), not two, and
        # neither path pays for checking the other's guards first
        'no size asserts': torch.compile(
            lambda: unchecked.step(), fullgraph=True, options=NO_SIZE_ASSERTS
        ),
        'torch.optim compiled': torch.compile(theirs.step),
    }


def bench(tree: str, name: str, rounds: int) -> dict[str, float]:
    """Median seconds per step of each path."""
    runners = _runners(name, _leaves(tree))
    with torch.no_grad():
        for f in runners.values():  # warm up, compiles
            for _ in range(5):
                f()
        # enough steps per sample that the timer's resolution and one call's jitter do not matter
        t0 = time.perf_counter()
        runners['torchopt eager']()
        inner = max(1, int(2e-3 / max(time.perf_counter() - t0, 1e-7)))
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(rounds):
            for k, f in runners.items():  # interleaved: load changes hit every path alike
                t0 = time.perf_counter()
                for _ in range(inner):
                    f()
                times[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    """Print the table (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=30)
    parser.add_argument('--quick', action='store_true', help='few rounds, no 10M tree')
    parser.add_argument('--only', nargs='*', default=None, help='optimizer names to run')
    parser.add_argument('--trees', nargs='*', default=None, help='tree name prefixes (mlp, a, b)')
    args = parser.parse_args()
    torch.set_num_threads(1)  # before compiling: inductor generates kernels for this many threads
    trees = [MLP, *TREES]
    if args.quick:
        trees = [t for t in trees if TREES.get(t, (0, 0))[1] < 1_000_000]
    if args.trees is not None:
        trees = [t for t in trees if any(t.startswith(prefix) for prefix in args.trees)]
    rounds = 5 if args.quick else args.rounds
    print(
        f'torch {torch.__version__}, torchopt {torchopt.__version__}, 1 thread, inductor, '
        f'median of {rounds} rounds'
    )
    print()
    print(
        '| tree | optimizer | torchopt eager (µs) | torchopt compiled (µs) '
        '| torch.optim compiled (µs) | compiled / eager | compiled / torch.optim compiled '
        '| no size asserts / eager |'
    )
    print('|---|---|---:|---:|---:|---:|---:|---:|')
    names = [n for n in OPTIMIZERS if args.only is None or n in args.only]
    for tree in trees:
        for name in names:
            res = bench(tree, name, rounds)
            eager, ours, unchecked, theirs = (res[k] for k in PATHS)
            print(
                f'| {tree} | {name} | {eager * 1e6:.0f} | {ours * 1e6:.0f} | {theirs * 1e6:.0f} '
                f'| {ours / eager:.2f}x | {ours / theirs:.2f}x | {unchecked / eager:.2f}x |'
            )
            sys.stdout.flush()
            torch._dynamo.reset()  # pylint: disable=protected-access  # a fresh cache per case


if __name__ == '__main__':
    main()
