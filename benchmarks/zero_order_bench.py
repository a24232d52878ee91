"""Speed of ``torchopt.diff.zero_order`` against a hand-written batched ES estimator.

For N = 1, 10, 100, 1000 noise samples, times one gradient estimate (forward + backward) of a
small MLP objective, as a ratio to a hand-written estimator that evaluates all perturbations with
explicit batched matrix products, measured in the same process and interleaved (these machines
are noisy). The ``loop`` column evaluates the perturbations one at a time, as TorchOpt 0.7 does.

Usage::

    python benchmarks/zero_order_bench.py [--method antithetic] [--device cpu] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import torchopt

__all__ = ['main']


def make_problem(device: torch.device, batch: int, hidden: int, features: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, features, generator=gen).to(device)
    y = torch.randn(batch, generator=gen).to(device)
    params = {
        'w1': 0.3 * torch.randn(hidden, features, generator=gen),
        'b1': torch.zeros(hidden),
        'w2': 0.3 * torch.randn(1, hidden, generator=gen),
    }
    params = {k: v.to(device).requires_grad_() for k, v in params.items()}

    def objective(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hidden_act = torch.tanh(x @ p['w1'].T + p['b1'])
        return ((hidden_act @ p['w2'].T).squeeze(-1) - y).pow(2).mean()

    def batched_objective(p: dict) -> torch.Tensor:
        """Hand-vectorised: every leaf has a leading sample dimension."""
        hidden_act = torch.tanh(torch.einsum('bf,nhf->nbh', x, p['w1']) + p['b1'][:, None, :])
        out = torch.einsum('nbh,noh->nbo', hidden_act, p['w2']).squeeze(-1)
        return (out - y).pow(2).mean(-1)

    return params, x, y, objective, batched_objective


def noise_distribution(device: torch.device) -> torch.distributions.Normal:
    """Standard normal noise drawn directly on ``device``."""
    zero = torch.zeros((), device=device)
    return torch.distributions.Normal(zero, torch.ones((), device=device))


def hand_written(
    params: dict, objective: Callable, batched: Callable, x, y, method: str, n: int, sigma: float
) -> Callable[[], None]:
    normal = noise_distribution(x.device)

    def step() -> None:
        with torch.no_grad():
            f0 = objective(params, x, y)  # the forward pass
            noise = {k: normal.sample((n, *v.shape)).to(v) for k, v in params.items()}
            if method == 'antithetic':
                pert = {k: torch.cat((v + sigma * noise[k], v - sigma * noise[k]))
                        for k, v in params.items()}
                vals = batched(pert)
                weights = (vals[:n] - vals[n:]) / (2 * n * sigma)
            else:
                vals = batched({k: v + sigma * noise[k] for k, v in params.items()})
                weights = (vals - f0 if method == 'forward' else vals) / (n * sigma)
            for k, v in params.items():
                v.grad = (weights @ noise[k].reshape(n, -1)).view_as(v)

    return step


def library(params: dict, objective: Callable, x, y, method, n, sigma, vectorize) -> Callable:
    fn = torchopt.diff.zero_order(
        noise_distribution(x.device),
        method=method,
        num_samples=n,
        sigma=sigma,
        vectorize=vectorize,
    )(objective)

    def step() -> None:
        for v in params.values():
            v.grad = None
        fn(params, x, y).backward()

    return step


def timeit(step: Callable[[], None], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--method', default='antithetic', choices=['naive', 'forward', 'antithetic']
    )
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--repeats', type=int, default=30)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--sizes', type=int, nargs='+', default=[1, 10, 100, 1000])
    parser.add_argument('--loop-max', type=int, default=100, help='largest N timed with the loop')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    params, x, y, objective, batched = make_problem(device, batch=64, hidden=32, features=16)
    dim = sum(v.numel() for v in params.values())
    sigma = 0.05
    print(f'zero_order benchmark: method={args.method}, d={dim}, device={device}, '
          f'threads={torch.get_num_threads()}, torch {torch.__version__}')
    print(f'{"N":>6} {"hand (ms)":>10} {"zero_order (ms)":>16} {"ratio":>6} '
          f'{"loop (ms)":>10} {"loop ratio":>10}')
    for n in args.sizes:
        steps = {
            'hand': hand_written(params, objective, batched, x, y, args.method, n, sigma),
            'lib': library(params, objective, x, y, args.method, n, sigma, None),
        }
        if n <= args.loop_max:
            steps['loop'] = library(params, objective, x, y, args.method, n, sigma, False)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(3):  # warm-up
            for step in steps.values():
                step()
        for _ in range(args.repeats):
            for k, step in steps.items():  # interleaved
                times[k].append(timeit(step, sync))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        loop = (f'{med["loop"]:>10.3f} {med["loop"] / med["hand"]:>9.1f}x' if 'loop' in med
                else f'{"-":>10} {"-":>10}')
        print(f'{n:>6} {med["hand"]:>10.3f} {med["lib"]:>16.3f} '
              f'{med["lib"] / med["hand"]:>5.2f}x {loop}')


if __name__ == '__main__':
    main()
