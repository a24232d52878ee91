"""Speed of ``torchopt.diff.zero_order`` against a hand-written batched ES estimator.

For N = 1, 10, 100, 1000 noise samples, times one gradient estimate (forward + backward) as a
ratio to a hand-written estimator that draws the noise with ``torch.randn`` and evaluates all
perturbations in one call of a hand-vectorised objective, measured in the same process,
interleaved and paired (these machines are noisy): each round times both, the table shows the
medians over rounds and the median of the per-round ratios. ``overhead`` is the median of the
per-round differences (library - hand), the library's cost per call beyond the arithmetic.

Objectives:

* ``quadratic``: ``f(x) = 0.5 x^T A x + b^T x`` in d = 100 (cheap: the fixed cost of each call
  and the batching dominate);
* ``mlp``: a small MLP regression loss, parameters a dict of three leaves (noise per leaf);
* ``module``: the same MLP as a ``ZeroOrderGradientModule`` (its ``sample`` method is the noise
  source, whatever ``--samplers`` says).

Noise samplers (every form ``zero_order`` accepts): ``callable`` (``lambda shape:
torch.randn(shape)``), ``normal`` (``torch.distributions.Normal(0, 1)``) and ``samplable`` (an
object with a ``sample(sample_shape)`` method). The ``loop`` column (``--loop-max``) evaluates
the perturbations one at a time, as TorchOpt 0.7 does.

Usage::

    python benchmarks/zero_order_bench.py [--objectives quadratic mlp module]
        [--samplers callable normal samplable] [--methods antithetic] [--sizes 1 10 100 1000]
        [--repeats 60] [--threads 1] [--device cpu] [--loop-max 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

import torchopt

__all__ = ['main']

METHODS = ('naive', 'forward', 'antithetic')
SIGMA = 0.05


class Problem(NamedTuple):
    """A zero-order benchmark problem: parameters, the decorated-function call and the baseline."""

    params: dict[str, Tensor]  # leaves whose .grad the steps set
    library: Callable[[Any, str, int, bool | None], Callable[[], None]]  # (sampler, ...) -> step
    objective: Callable[[dict[str, Tensor]], Tensor]  # per-sample, on the params dict
    batched: Callable[[dict[str, Tensor]], Tensor]  # every leaf with a leading sample dimension


class RandnSampler:  # pylint: disable=too-few-public-methods
    """A user-defined ``Samplable``: standard normal noise from ``sample(sample_shape)``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return torch.randn(sample_shape, device=self.device)


def make_sampler(kind: str, device: torch.device) -> Any:
    if kind == 'callable':
        return lambda shape: torch.randn(shape, device=device)
    if kind == 'normal':
        zero = torch.zeros((), device=device)
        return torch.distributions.Normal(zero, torch.ones((), device=device))
    return RandnSampler(device)


def decorated_step(
    objective: Callable[..., Tensor], params: dict[str, Tensor], args: tuple[Any, ...]
) -> Callable[[Any, str, int, bool | None], Callable[[], None]]:
    """``zero_order(...)(objective)(params, *args).backward()`` as a step factory."""

    def factory(sampler: Any, method: str, n: int, vectorize: bool | None) -> Callable[[], None]:
        fn = torchopt.diff.zero_order(
            sampler, method=method, num_samples=n, sigma=SIGMA, vectorize=vectorize
        )(objective)

        def step() -> None:
            for v in params.values():
                v.grad = None
            fn(params, *args).backward()

        return step

    return factory


def quadratic(device: torch.device, dim: int = 100) -> Problem:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
    a = ((q * torch.linspace(0.5, 2.0, dim)) @ q.T).to(device)
    b = torch.randn(dim, generator=gen).to(device)
    params = {'x': (0.3 * torch.randn(dim, generator=gen)).to(device).requires_grad_()}

    def f(x: Tensor) -> Tensor:
        return 0.5 * x @ a @ x + b @ x

    def batched(p: dict[str, Tensor]) -> Tensor:
        x = p['x']
        return 0.5 * ((x @ a) * x).sum(-1) + x @ b

    def factory(sampler: Any, method: str, n: int, vectorize: bool | None) -> Callable[[], None]:
        fn = torchopt.diff.zero_order(
            sampler, method=method, num_samples=n, sigma=SIGMA, vectorize=vectorize
        )(f)
        x = params['x']

        def step() -> None:
            x.grad = None
            fn(x).backward()

        return step

    return Problem(params, factory, lambda p: f(p['x']), batched)


def _mlp_data(device: torch.device, batch: int = 64, hidden: int = 32, features: int = 16):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, features, generator=gen).to(device)
    y = torch.randn(batch, generator=gen).to(device)
    params = {
        'w1': 0.3 * torch.randn(hidden, features, generator=gen),
        'b1': torch.zeros(hidden),
        'w2': 0.3 * torch.randn(1, hidden, generator=gen),
    }
    return x, y, {k: v.to(device).requires_grad_() for k, v in params.items()}


def _mlp_functions(x: Tensor, y: Tensor):
    def objective(p: dict[str, Tensor], x: Tensor = x, y: Tensor = y) -> Tensor:
        hidden_act = torch.tanh(x @ p['w1'].T + p['b1'])
        return ((hidden_act @ p['w2'].T).squeeze(-1) - y).pow(2).mean()

    def batched(p: dict[str, Tensor]) -> Tensor:
        hidden_act = torch.tanh(torch.einsum('bf,nhf->nbh', x, p['w1']) + p['b1'][:, None, :])
        out = torch.einsum('nbh,noh->nbo', hidden_act, p['w2']).squeeze(-1)
        return (out - y).pow(2).mean(-1)

    return objective, batched


def mlp(device: torch.device) -> Problem:
    x, y, params = _mlp_data(device)
    objective, batched = _mlp_functions(x, y)
    return Problem(params, decorated_step(objective, params, (x, y)), objective, batched)


def module(device: torch.device) -> Problem:
    """The MLP as a ``ZeroOrderGradientModule``: the step ignores the sampler argument."""
    x, y, params = _mlp_data(device)
    objective, batched = _mlp_functions(x, y)

    def factory(sampler: Any, method: str, n: int, vectorize: bool | None) -> Callable[[], None]:
        class Net(
            torchopt.nn.ZeroOrderGradientModule,
            method=method,
            num_samples=n,
            sigma=SIGMA,
            vectorize=vectorize,
        ):
            def __init__(self) -> None:
                super().__init__()
                self.w1 = nn.Parameter(params['w1'].detach().clone())
                self.b1 = nn.Parameter(params['b1'].detach().clone())
                self.w2 = nn.Parameter(params['w2'].detach().clone())

            def forward(self, x: Tensor, y: Tensor) -> Tensor:
                return objective({'w1': self.w1, 'b1': self.b1, 'w2': self.w2}, x, y)

            def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
                return torch.randn(sample_shape, device=device)

        net = Net()
        for name, value in net.named_parameters():
            params[name] = value  # the hand-written step reads (and writes .grad of) the same

        def step() -> None:
            net.zero_grad(set_to_none=True)
            net(x, y).backward()

        return step

    return Problem(params, factory, objective, batched)


def hand_written(problem: Problem, method: str, n: int) -> Callable[[], None]:
    """The baseline: ``torch.randn`` noise per leaf, one call of the batched objective."""
    params = problem.params

    def step() -> None:
        with torch.no_grad():
            f0 = problem.objective(params)  # the forward pass
            noise = {k: torch.randn((n, *v.shape), device=v.device) for k, v in params.items()}
            if method == 'antithetic':
                pert = {k: torch.cat((v + SIGMA * noise[k], v - SIGMA * noise[k]))
                        for k, v in params.items()}
                vals = problem.batched(pert)
                weights = (vals[:n] - vals[n:]) / (2 * n * SIGMA)
            else:
                vals = problem.batched({k: v + SIGMA * noise[k] for k, v in params.items()})
                weights = (vals - f0 if method == 'forward' else vals) / (n * SIGMA)
            for k, v in params.items():
                v.grad = (weights @ noise[k].reshape(n, -1)).view_as(v)

    return step


def measure(
    steps: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Per-round seconds per call of each step; rounds interleave the steps (order alternates)."""
    for _ in range(3):  # warm-up (the first call also probes how the function batches)
        for step in steps.values():
            step()
    sync()
    start = time.perf_counter()
    steps['hand']()
    sync()
    # ~0.5 ms per timing: short enough that most rounds escape preemption on a busy machine
    inner = max(1, min(20, int(5e-4 / max(time.perf_counter() - start, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(repeats):
        for k in names if r % 2 == 0 else reversed(names):
            step = steps[k]
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                step()
            sync()
            times[k].append((time.perf_counter() - start) / inner)
    return times


def run_table(
    name: str, problem: Problem, sampler_kind: str, method: str, args: argparse.Namespace
) -> None:
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    sampler = make_sampler(sampler_kind, device)
    dim = sum(v.numel() for v in problem.params.values())
    label = 'module.sample' if name == 'module' else sampler_kind
    print(f'\n{name} (d={dim}, {len(problem.params)} leaves), sampler={label}, method={method}')
    print(f'{"N":>6} {"hand (ms)":>10} {"zero_order (ms)":>16} {"ratio":>6} '
          f'{"overhead (ms)":>14} {"loop ratio":>10}')
    for n in args.sizes:
        steps = {
            'hand': hand_written(problem, method, n),
            'lib': problem.library(sampler, method, n, None),
        }
        if n <= args.loop_max:
            steps['loop'] = problem.library(sampler, method, n, False)
        times = measure(steps, args.repeats, sync)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ratio = statistics.median(a / b for a, b in zip(times['lib'], times['hand']))
        extra = statistics.median(a - b for a, b in zip(times['lib'], times['hand'])) * 1e3
        loop = (f'{statistics.median(a / b for a, b in zip(times["loop"], times["hand"])):>9.1f}x'
                if 'loop' in times else f'{"-":>10}')
        print(f'{n:>6} {med["hand"]:>10.3f} {med["lib"]:>16.3f} {ratio:>5.2f}x '
              f'{extra:>14.3f} {loop}', flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--objectives', nargs='+', default=['quadratic', 'mlp', 'module'],
                        choices=['quadratic', 'mlp', 'module'])
    parser.add_argument('--samplers', nargs='+', default=['callable', 'normal', 'samplable'],
                        choices=['callable', 'normal', 'samplable'])
    parser.add_argument('--methods', nargs='+', default=['antithetic'],
                        choices=[*METHODS, 'all'])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--repeats', type=int, default=60)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--sizes', type=int, nargs='+', default=[1, 10, 100, 1000])
    parser.add_argument('--loop-max', type=int, default=100, help='largest N timed with the loop')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = METHODS if 'all' in args.methods else args.methods
    device = torch.device(args.device)
    print(f'zero_order benchmark: device={device}, threads={torch.get_num_threads()}, '
          f'torch {torch.__version__}, sigma={SIGMA}, {args.repeats} paired rounds')
    builders = {'quadratic': quadratic, 'mlp': mlp, 'module': module}
    for name in args.objectives:
        for method in methods:
            for sampler_kind in ['module'] if name == 'module' else args.samplers:
                run_table(name, builders[name](device), sampler_kind, method, args)


if __name__ == '__main__':
    main()
