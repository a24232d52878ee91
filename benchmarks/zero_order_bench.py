"""Speed of ``torchopt.diff.zero_order`` against a hand-written batched ES estimator.

For N = 10, 100, 1000 noise samples, times one gradient estimate (forward + backward) as a
ratio to a hand-written estimator that draws the noise with ``torch.randn`` and evaluates all
perturbations in one call of a hand-vectorised objective, measured in the same process,
interleaved and paired (these machines are noisy): each round times every variant, the table
shows the medians over rounds and the median of the per-round ratios. ``overhead`` is the median
of the per-round differences (library - hand), the library's cost per call beyond the
arithmetic. The clock is the thread's CPU time by default (``--clock thread``: with one thread,
the wall time minus the time the thread was preempted, which on a shared machine is most of the
noise); ``--clock wall`` times wall-clock seconds.

Columns beside ``ratio`` (all against the same hand-written step, same rounds):

* ``floor``: the bare minimum for a *per-sample* objective: an ``autograd.Function`` whose
  backward draws ``torch.randn`` noise, perturbs with one kernel per leaf, evaluates the
  objective with one direct ``vmap`` call and reduces with one ``addmv`` per leaf (no argument
  handling, no checks, no sampler): the cost of the two things the API cannot avoid for a
  per-sample objective, the autograd node and ``vmap``'s per-operation cost inside the
  objective, with the least arithmetic around them;
* ``batched``: the library with ``batched=True`` and the hand-vectorised objective (the user
  writes the batch, as the hand-written estimator does; no ``vmap``);
* ``loop``: the perturbations evaluated one at a time (``vectorize=False``), as TorchOpt 0.7
  does (for N up to ``--loop-max``).

Accuracy (``--accuracy-trials``, 200 by default, 0 to skip): for the objectives that are
quadratics (``quadratic``, ``leaves``), every sampler and N, the relative RMS error of the
library's antithetic estimate over that many estimates (fixed seeds), against the exact gradient
and against the closed form ``sqrt((d + 1) / N)`` (exact on a quadratic, for every sigma), with
the standard error of the measurement (from the spread of the squared errors).

Objectives:

* ``quadratic``: ``f(x) = 0.5 x^T A x + b^T x`` in d = 100 (cheap: the fixed cost of each call
  and the batching dominate);
* ``leaves``: the same kind of quadratic over a dict of three leaves of 50, 30 and 4x5
  elements (d = 100, noise per leaf: the pytree path);
* ``mlp``: a small MLP regression loss, parameters a dict of three leaves (noise per leaf);
* ``module``: the same MLP as a ``ZeroOrderGradientModule`` (its ``sample`` method is the noise
  source, whatever ``--samplers`` says).

Noise samplers (every form ``zero_order`` accepts): ``callable`` (``lambda shape:
torch.randn(shape)``), ``normal`` (``torch.distributions.Normal(0, 1)``) and ``samplable`` (an
object with a ``sample(sample_shape)`` method).

Usage::

    python benchmarks/zero_order_bench.py [--objectives quadratic leaves mlp module]
        [--samplers callable normal samplable] [--methods naive forward antithetic]
        [--sizes 10 100 1000] [--repeats 60] [--threads 1] [--device cpu] [--loop-max 10]
        [--clock thread] [--accuracy-trials 200]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

import torchopt
from torchopt_zero._batching import vmap_call

__all__ = ['main']

METHODS = ('naive', 'forward', 'antithetic')
SIGMA = 0.05


Factory = Callable[[Any, str, int, bool | None], Callable[[], None]]  # (sampler, ...) -> step


class Problem(NamedTuple):
    """A zero-order benchmark problem: parameters, the decorated-function call and the baseline."""

    params: dict[str, Tensor]  # leaves whose .grad the steps set
    library: Factory  # the decorated per-sample objective
    objective: Callable[[dict[str, Tensor]], Tensor]  # per-sample, on the params dict
    batched: Callable[[dict[str, Tensor]], Tensor]  # every leaf with a leading sample dimension
    batched_library: Factory | None  # the decorated hand-vectorised objective (batched=True)
    flat: Callable[..., Tensor] | None = None  # per-sample, of the leaves (None: via the dict)


class RandnSampler:  # pylint: disable=too-few-public-methods
    """A user-defined ``Samplable``: standard normal noise from ``sample(sample_shape)``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        return torch.randn(sample_shape, device=self.device)


def make_sampler(kind: str, device: torch.device) -> Any:
    if kind == 'callable':
        return lambda shape: torch.randn(shape, device=device)
    if kind == 'normal':
        zero = torch.zeros((), device=device)
        return torch.distributions.Normal(zero, torch.ones((), device=device))
    return RandnSampler(device)


def decorated_step(
    objective: Callable[..., Tensor],
    params: dict[str, Tensor],
    args: tuple[Any, ...],
    batched: bool = False,
) -> Factory:
    """``zero_order(...)(objective)(params, *args).backward()`` as a step factory."""

    def factory(sampler: Any, method: str, n: int, vectorize: bool | None) -> Callable[[], None]:
        extra = {'batched': True} if batched else {'vectorize': vectorize}
        fn = torchopt.diff.zero_order(sampler, method=method, num_samples=n, sigma=SIGMA, **extra)(
            objective
        )

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

    def make_factory(objective: Callable[[Tensor], Tensor], batch: bool) -> Factory:
        def factory(
            sampler: Any, method: str, n: int, vectorize: bool | None
        ) -> Callable[[], None]:
            extra = {'batched': True} if batch else {'vectorize': vectorize}
            fn = torchopt.diff.zero_order(
                sampler, method=method, num_samples=n, sigma=SIGMA, **extra
            )(objective)
            x = params['x']

            def step() -> None:
                x.grad = None
                fn(x).backward()

            return step

        return factory

    return Problem(
        params,
        make_factory(f, False),
        lambda p: f(p['x']),
        batched,
        make_factory(lambda x: batched({'x': x}), True),
        f,
    )


def leaves(device: torch.device) -> Problem:
    """A d = 100 quadratic over three leaves (50, 30 and 4x5 elements): noise per leaf."""
    gen = torch.Generator().manual_seed(0)
    shapes = {'u': (50,), 'v': (30,), 'w': (4, 5)}
    mats, vecs, params = {}, {}, {}
    for k, shape in shapes.items():
        dim = math.prod(shape)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
        mats[k] = ((q * torch.linspace(0.5, 2.0, dim)) @ q.T).to(device)
        vecs[k] = torch.randn(dim, generator=gen).to(device)
        params[k] = (0.3 * torch.randn(shape, generator=gen)).to(device).requires_grad_()

    def objective(p: dict[str, Tensor]) -> Tensor:
        total = 0.0
        for k, value in p.items():
            x = value.reshape(-1)
            total = total + 0.5 * x @ mats[k] @ x + vecs[k] @ x
        return total

    def batched(p: dict[str, Tensor]) -> Tensor:
        total = 0.0
        for k, value in p.items():
            x = value.flatten(1)
            total = total + 0.5 * ((x @ mats[k]) * x).sum(-1) + x @ vecs[k]
        return total

    return Problem(
        params,
        decorated_step(objective, params, ()),
        objective,
        batched,
        decorated_step(batched, params, (), batched=True),
    )


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
    return Problem(
        params,
        decorated_step(objective, params, (x, y)),
        objective,
        batched,
        decorated_step(lambda p, x, y: batched(p), params, (x, y), batched=True),
    )


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

            def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
                return torch.randn(sample_shape, device=device)

        net = Net()
        for name, value in net.named_parameters():
            params[name] = value  # the hand-written step reads (and writes .grad of) the same

        def step() -> None:
            net.zero_grad(set_to_none=True)
            net(x, y).backward()

        return step

    return Problem(params, factory, objective, batched, None)


def hand_written(problem: Problem, method: str, n: int) -> Callable[[], None]:
    """The baseline: ``torch.randn`` noise per leaf, one call of the batched objective."""
    params = problem.params

    def step() -> None:
        with torch.no_grad():
            f0 = problem.objective(params)  # the forward pass
            noise = {k: torch.randn((n, *v.shape), device=v.device) for k, v in params.items()}
            if method == 'antithetic':
                pert = {
                    k: torch.cat((v + SIGMA * noise[k], v - SIGMA * noise[k]))
                    for k, v in params.items()
                }
                vals = problem.batched(pert)
                weights = (vals[:n] - vals[n:]) / (2 * n * SIGMA)
            else:
                vals = problem.batched({k: v + SIGMA * noise[k] for k, v in params.items()})
                weights = (vals - f0 if method == 'forward' else vals) / (n * SIGMA)
            for k, v in params.items():
                v.grad = (weights @ noise[k].reshape(n, -1)).view_as(v)

    return step


def floor_step(problem: Problem, method: str, n: int) -> Callable[[], None]:
    """The bare minimum around the per-sample objective: an autograd node and one direct vmap.

    What any implementation of this API has to do, and nothing else: an ``autograd.Function``
    (the output is differentiated by ``.backward()``) whose backward draws ``torch.randn`` noise
    per leaf, perturbs each leaf with one kernel (``torch.add``, or ``torch.addcmul`` with
    ``[sigma, -sigma]`` for both antithetic halves), evaluates the user's per-sample objective at
    all perturbations with one direct ``vmap`` call (the entry the library uses) and reduces with
    one ``addmv`` per leaf, the scale folded in. No argument handling, no checks, no sampler.
    """
    params = problem.params
    keys = list(params)
    objective = problem.objective
    antithetic = method == 'antithetic'
    scale = 1.0 / ((2 if antithetic else 1) * n * SIGMA)

    def by_dict(*values: Tensor) -> Tensor:
        return objective(dict(zip(keys, values)))

    flat = problem.flat or by_dict
    signs = torch.tensor([SIGMA, -SIGMA]).view(2, 1, 1)

    class Floor(torch.autograd.Function):  # pylint: disable=abstract-method
        @staticmethod
        def forward(ctx: Any, *values: Tensor) -> Tensor:  # type: ignore[override]
            ctx.save_for_backward(*values)
            out = flat(*values)
            ctx.f0 = out.detach() if method == 'forward' else None
            return out

        @staticmethod
        def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
            values = ctx.saved_tensors
            noise = [torch.randn(size) for size in sizes]
            flats = [v if one_dim else v.reshape(-1) for v, one_dim in zip(values, flat_leaf)]
            if antithetic:
                pert = [torch.addcmul(v, signs, u) for v, u in zip(flats, noise)]
                pert = [p.view(rows) for p, rows in zip(pert, rows_antithetic)]
                vals = vmap_call(flat, pert, 'error')
                vals = vals[:n] - vals[n:]
            else:
                pert = [torch.add(v, u, alpha=SIGMA) for v, u in zip(flats, noise)]
                pert = [p if one_dim else p.view(r) for p, r, one_dim in zip(pert, rows, flat_leaf)]
                vals = vmap_call(flat, pert, 'error')
                if ctx.f0 is not None:
                    vals = vals - ctx.f0
            alpha = float(grad) * scale
            grads = [
                torch.addmv(u.new_empty(u.shape[1]), u.T, vals, beta=0, alpha=alpha) for u in noise
            ]
            return tuple(
                g if one_dim else g.view(v.shape) for g, v, one_dim in zip(grads, values, flat_leaf)
            )

    leaves = list(params.values())
    signs = signs.to(leaves[0])
    sizes = [torch.Size((n, v.numel())) for v in leaves]
    flat_leaf = [v.ndim == 1 for v in leaves]
    rows = [(n, *v.shape) for v in leaves]
    rows_antithetic = [(2 * n, *v.shape) for v in leaves]
    vmap_call(flat, [v.detach()[None] for v in leaves], 'error', True)  # set-up
    apply = super(torch.autograd.Function, Floor).apply  # the C apply, as the library calls it

    def step() -> None:
        for v in leaves:
            v.grad = None
        apply(*leaves).backward()

    return step


def measure(
    steps: dict[str, Callable[[], None]],
    repeats: int,
    sync: Callable[[], None],
    clock: Callable[[], float],
) -> dict[str, list[float]]:
    """Per-round seconds per call of each step; rounds interleave the steps (order alternates)."""
    for _ in range(3):  # warm-up (the first call also probes how the function batches)
        for step in steps.values():
            step()
    sync()
    start = clock()
    steps['hand']()
    sync()
    # ~0.5 ms per timing: short enough that most rounds escape preemption on a busy machine
    inner = max(1, min(20, int(5e-4 / max(clock() - start, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(repeats):
        for k in names if r % 2 == 0 else reversed(names):
            step = steps[k]
            sync()
            start = clock()
            for _ in range(inner):
                step()
            sync()
            times[k].append((clock() - start) / inner)
    return times


def _ratio(times: dict[str, list[float]], key: str) -> str:
    if key not in times:
        return f'{"-":>8}'
    return f'{statistics.median(a / b for a, b in zip(times[key], times["hand"])):>7.2f}x'


def run_table(
    name: str, problem: Problem, sampler_kind: str, method: str, args: argparse.Namespace
) -> list[tuple[int, float]]:
    """Print one table; return the (N, ratio) pairs."""
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    clock = time.thread_time if args.clock == 'thread' else time.perf_counter
    sampler = make_sampler(sampler_kind, device)
    dim = sum(v.numel() for v in problem.params.values())
    label = 'module.sample' if name == 'module' else sampler_kind
    print(f'\n{name} (d={dim}, {len(problem.params)} leaves), sampler={label}, method={method}')
    print(
        f'{"N":>6} {"hand (ms)":>10} {"zero_order (ms)":>16} {"ratio":>7} '
        f'{"overhead (ms)":>14} {"floor":>8} {"batched":>8} {"loop":>8}'
    )
    ratios = []
    for n in args.sizes:
        steps = {
            'hand': hand_written(problem, method, n),
            'lib': problem.library(sampler, method, n, None),
            'floor': floor_step(problem, method, n),
        }
        if problem.batched_library is not None:
            steps['batched'] = problem.batched_library(sampler, method, n, None)
        if n <= args.loop_max:
            steps['loop'] = problem.library(sampler, method, n, False)
        times = measure(steps, args.repeats, sync, clock)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        ratio = statistics.median(a / b for a, b in zip(times['lib'], times['hand']))
        extra = statistics.median(a - b for a, b in zip(times['lib'], times['hand'])) * 1e3
        ratios.append((n, ratio))
        print(
            f'{n:>6} {med["hand"]:>10.3f} {med["lib"]:>16.3f} {ratio:>6.2f}x '
            f'{extra:>14.3f} {_ratio(times, "floor")} {_ratio(times, "batched")} '
            f'{_ratio(times, "loop")}',
            flush=True,
        )
    return ratios


def accuracy_table(
    name: str, problem: Problem, sampler_kind: str, args: argparse.Namespace
) -> list[tuple[int, float]]:
    """Print the antithetic estimate's relative RMS error per N; return (N, measured / rule)."""
    device = torch.device(args.device)
    params = problem.params
    leaves_ = list(params.values())
    with torch.enable_grad():
        exact = torch.autograd.grad(problem.objective(params), leaves_)
    g = torch.cat([v.reshape(-1) for v in exact]).double()
    dim = g.numel()
    print(
        f'\naccuracy: {name} (d={dim}, {len(params)} leaves), sampler={sampler_kind}, '
        f'antithetic, {args.accuracy_trials} estimates'
    )
    print(f'{"N":>6} {"rel. RMS error":>15} {"+-":>7} {"sqrt((d+1)/N)":>14} {"ratio":>7}')
    sampler = make_sampler(sampler_kind, device)
    out = []
    for n in args.sizes:
        step = problem.library(sampler, 'antithetic', n, None)
        torch.manual_seed(n)
        errors = []
        for _ in range(args.accuracy_trials):
            step()
            grad = torch.cat([v.grad.reshape(-1) for v in leaves_]).double()
            errors.append(float((grad - g).pow(2).sum()))
        sq = torch.tensor(errors, dtype=torch.float64)
        mse = float(sq.mean())
        rel = math.sqrt(mse) / float(g.norm())
        se = float(sq.std()) / math.sqrt(len(errors)) / (2 * math.sqrt(mse)) / float(g.norm())
        rule = math.sqrt((dim + 1) / n)
        out.append((n, rel / rule))
        print(f'{n:>6} {rel:>15.4f} {se:>7.4f} {rule:>14.4f} {rel / rule:>7.3f}', flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--objectives',
        nargs='+',
        default=['quadratic', 'leaves', 'mlp', 'module'],
        choices=['quadratic', 'leaves', 'mlp', 'module'],
    )
    parser.add_argument(
        '--samplers',
        nargs='+',
        default=['callable', 'normal', 'samplable'],
        choices=['callable', 'normal', 'samplable'],
    )
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=[*METHODS, 'all'])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--repeats', type=int, default=60)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--sizes', type=int, nargs='+', default=[10, 100, 1000])
    parser.add_argument('--loop-max', type=int, default=10, help='largest N timed with the loop')
    parser.add_argument(
        '--accuracy-trials',
        type=int,
        default=200,
        help='estimates per accuracy measurement (quadratic objectives; 0: skip)',
    )
    parser.add_argument(
        '--clock',
        choices=['thread', 'wall'],
        default='thread',
        help="the thread's CPU time (default) or wall-clock time",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = METHODS if 'all' in args.methods else args.methods
    device = torch.device(args.device)
    print(
        f'zero_order benchmark: device={device}, threads={torch.get_num_threads()}, '
        f'torch {torch.__version__}, sigma={SIGMA}, {args.repeats} paired rounds, '
        f'clock={args.clock}'
    )
    builders = {'quadratic': quadratic, 'leaves': leaves, 'mlp': mlp, 'module': module}
    summary: dict[tuple[str, int], list[float]] = {}
    for name in args.objectives:
        for method in methods:
            for sampler_kind in ['module'] if name == 'module' else args.samplers:
                for n, ratio in run_table(name, builders[name](device), sampler_kind, method, args):
                    summary.setdefault((name, n), []).append(ratio)
    print('\nsummary: zero_order / hand-written, range over samplers and methods')
    for (name, n), values in summary.items():
        print(f'  {name:>10} N={n:<5} {min(values):.2f}x - {max(values):.2f}x')
    accuracy: dict[tuple[str, int], list[float]] = {}
    if args.accuracy_trials > 0:
        for name in [o for o in args.objectives if o in ('quadratic', 'leaves')]:
            for sampler_kind in args.samplers:
                problem = builders[name](device)
                for n, ratio in accuracy_table(name, problem, sampler_kind, args):
                    accuracy.setdefault((name, n), []).append(ratio)
        print('\naccuracy summary: antithetic relative RMS error / sqrt((d+1)/N) (target 0.9-1.1)')
        for (name, n), values in accuracy.items():
            print(f'  {name:>10} N={n:<5} {min(values):.3f} - {max(values):.3f}')


if __name__ == '__main__':
    main()
