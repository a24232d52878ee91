"""iMAML (Rajeswaran et al., 2019) few-shot classification on rotated scikit-learn digits.

Tasks: the 8x8 digits of :func:`sklearn.datasets.load_digits` rotated by 0/90/180/270 degrees
give 40 classes; digits 0-6 (28 classes) are used for meta-training and digits 7-9 (12 classes)
for meta-testing. Each task is an N-way K-shot problem with a support and a query set.

Inner problem (per task), starting from the meta-parameters :math:`\\theta`:

.. math::

    \\phi^\\star(\\theta) = \\arg\\min_\\phi \\; \\mathcal{L}_\\text{support}(\\phi)
        + \\frac{\\lambda}{2} \\|\\phi - \\theta\\|^2 ,

solved by a few gradient steps. The meta-gradient of the query loss at :math:`\\phi^\\star` is
computed implicitly (``torchopt.diff.implicit``), with either the functional API
(``custom_root``) or the module API (``ImplicitMetaGradientModule``).

The baseline is the same inner procedure from the untrained initialization (no meta-learning).

Usage::

    python examples/imaml/imaml_digits.py --quick          # ~15 s on 2 cores, both APIs
    python examples/imaml/imaml_digits.py --api module --meta-steps 1000

The plot ``outputs/imaml.png`` (or ``--out DIR``) shows the meta-training curves (query loss and
accuracy after adaptation) of each API next to its meta-test accuracy and the baseline's.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from sklearn.datasets import load_digits
from torch import nn

import torchopt
from torchopt.diff.implicit import ImplicitMetaGradientModule, custom_root

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_common_args, output_dir, progress, pyplot, set_threads  # noqa: E402

__all__ = [
    'TaskSampler',
    'functional_imaml',
    'main',
    'make_net',
    'module_imaml_class',
    'rotated_digits',
    'train_functional',
    'train_module',
]

Curve = list[tuple[float, float]]  # (mean query loss, mean query accuracy) per meta-step


# ----------------------------------------------------------------------------------------------
# data: 40 classes of rotated digits, N-way K-shot task sampler
# ----------------------------------------------------------------------------------------------


def rotated_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Images (M, 64) in [0, 1] and labels ``digit + 10 * rotation`` (40 classes)."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target)
    xs, ys = [], []
    for k in range(4):
        xs.append(torch.rot90(images, k, dims=(1, 2)).reshape(len(images), -1))
        ys.append(labels + 10 * k)
    return torch.cat(xs), torch.cat(ys)


class TaskSampler:
    """Samples N-way K-shot tasks (support and query sets, labels 0..N-1) from given classes."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        classes: list[int],
        ways: int,
        shots: int,
        queries: int,
        generator: torch.Generator,
    ) -> None:
        self.by_class = {c: x[y == c] for c in classes}
        self.classes = classes
        self.ways, self.shots, self.queries = ways, shots, queries
        self.gen = generator

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pick = torch.randperm(len(self.classes), generator=self.gen)[: self.ways]
        xs, ys, xq, yq = [], [], [], []
        for label, idx in enumerate(pick.tolist()):
            pool = self.by_class[self.classes[idx]]
            order = torch.randperm(len(pool), generator=self.gen)[: self.shots + self.queries]
            xs.append(pool[order[: self.shots]])
            xq.append(pool[order[self.shots :]])
            ys.append(torch.full((self.shots,), label))
            yq.append(torch.full((len(order) - self.shots,), label))
        return torch.cat(xs), torch.cat(ys), torch.cat(xq), torch.cat(yq)


def make_net(ways: int, hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, ways))


# ----------------------------------------------------------------------------------------------
# functional API: custom_root over a tuple of parameters
# ----------------------------------------------------------------------------------------------


def functional_imaml(net: nn.Module, cfg: argparse.Namespace):
    """Return ``adapt(meta_params, xs, ys) -> params`` with implicit meta-gradients."""
    names = [n for n, _ in net.named_parameters()]

    def forward(params, x):
        return torch.func.functional_call(net, dict(zip(names, params)), (x,))

    def inner_objective(params, meta_params, xs, ys):
        prox = sum((p - m).square().sum() for p, m in zip(params, meta_params))
        return F.cross_entropy(forward(params, xs), ys) + 0.5 * cfg.reg * prox

    def optimality(params, meta_params, xs, ys):
        return torch.func.grad(inner_objective)(params, meta_params, xs, ys)

    @custom_root(
        optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=cfg.cg_steps, ridge=0.0)
    )
    def adapt(init, meta_params, xs, ys):
        params = tuple(p.detach() for p in init)
        step = torch.func.grad(inner_objective)
        for _ in range(cfg.inner_steps):
            grads = step(params, meta_params, xs, ys)
            params = tuple(p - cfg.inner_lr * g for p, g in zip(params, grads))
        return params

    def run(meta_params, xs, ys):
        return adapt(meta_params, meta_params, xs, ys)

    return run, forward


def train_functional(
    cfg: argparse.Namespace, train_tasks: TaskSampler, test_tasks: TaskSampler
) -> tuple[float, float, Curve]:
    """Meta-train with ``custom_root``; returns meta-test accuracy (iMAML, baseline), curve."""
    torch.manual_seed(cfg.seed)
    net = make_net(cfg.ways)
    adapt, forward = functional_imaml(net, cfg)
    meta_params = tuple(p.detach().clone().requires_grad_() for p in net.parameters())
    init_params = tuple(p.detach().clone() for p in meta_params)
    optim = torch.optim.Adam(meta_params, lr=cfg.meta_lr)
    curve: Curve = []
    for _ in progress(range(cfg.meta_steps), 'meta-train (functional)'):
        optim.zero_grad()
        loss_sum = acc_sum = 0.0
        for _ in range(cfg.meta_batch):
            xs, ys, xq, yq = train_tasks.sample()
            params = adapt(meta_params, xs, ys)
            logits = forward(params, xq)
            loss = F.cross_entropy(logits, yq)
            (loss / cfg.meta_batch).backward()
            loss_sum += loss.item()
            acc_sum += (logits.argmax(-1) == yq).float().mean().item()
        optim.step()
        curve.append((loss_sum / cfg.meta_batch, acc_sum / cfg.meta_batch))

    def evaluate(start):
        accs = []
        for _ in progress(range(cfg.test_tasks), 'meta-test'):
            xs, ys, xq, yq = test_tasks.sample()
            with torch.no_grad():
                params = adapt(start, xs, ys)
                accs.append((forward(params, xq).argmax(-1) == yq).float().mean().item())
        return sum(accs) / len(accs)

    detached = tuple(p.detach() for p in meta_params)
    return evaluate(detached), evaluate(init_params), curve


# ----------------------------------------------------------------------------------------------
# module API: ImplicitMetaGradientModule
# ----------------------------------------------------------------------------------------------


def module_imaml_class(cfg: argparse.Namespace) -> type:
    """The ``ImplicitMetaGradientModule`` subclass solving the proximal inner problem of ``cfg``."""

    class InnerNet(
        ImplicitMetaGradientModule,
        linear_solve=torchopt.linear_solve.solve_cg(maxiter=cfg.cg_steps),
    ):
        def __init__(self, meta_net: nn.Module) -> None:
            super().__init__()
            self.meta_net = meta_net  # meta-module: its parameters are the meta-parameters
            self.net = copy.deepcopy(meta_net)  # parameters solved for
            self.reset_parameters()

        def reset_parameters(self) -> None:
            with torch.no_grad():
                for p, m in zip(self.net.parameters(), self.meta_net.parameters()):
                    p.copy_(m)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def objective(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
            prox = sum(
                (p - m).square().sum() for p, m in zip(self.parameters(), self.meta_parameters())
            )
            return F.cross_entropy(self.net(xs), ys) + 0.5 * cfg.reg * prox

        def solve(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
            params = list(self.parameters())
            optim = torchopt.SGD(params, lr=cfg.inner_lr)
            with torch.enable_grad():
                for _ in range(cfg.inner_steps):
                    optim.zero_grad()
                    self.objective(xs, ys).backward(inputs=params)
                    optim.step()

    return InnerNet


def train_module(
    cfg: argparse.Namespace, train_tasks: TaskSampler, test_tasks: TaskSampler
) -> tuple[float, float, Curve]:
    """Meta-train with the module API; returns meta-test accuracy (iMAML, baseline), curve."""
    torch.manual_seed(cfg.seed)
    inner_cls = module_imaml_class(cfg)
    meta_net = make_net(cfg.ways)
    init_net = copy.deepcopy(meta_net)
    optim = torch.optim.Adam(meta_net.parameters(), lr=cfg.meta_lr)
    curve: Curve = []
    for _ in progress(range(cfg.meta_steps), 'meta-train (module)'):
        optim.zero_grad()
        loss_sum = acc_sum = 0.0
        for _ in range(cfg.meta_batch):
            xs, ys, xq, yq = train_tasks.sample()
            inner = inner_cls(meta_net)
            inner.solve(xs, ys)
            logits = inner(xq)
            loss = F.cross_entropy(logits, yq)
            (loss / cfg.meta_batch).backward()
            loss_sum += loss.item()
            acc_sum += (logits.argmax(-1) == yq).float().mean().item()
        optim.step()
        curve.append((loss_sum / cfg.meta_batch, acc_sum / cfg.meta_batch))

    def evaluate(start: nn.Module) -> float:
        accs = []
        for _ in progress(range(cfg.test_tasks), 'meta-test'):
            xs, ys, xq, yq = test_tasks.sample()
            inner = inner_cls(start)
            inner.solve(xs, ys)
            with torch.no_grad():
                accs.append((inner(xq).argmax(-1) == yq).float().mean().item())
        return sum(accs) / len(accs)

    return evaluate(meta_net), evaluate(init_net), curve


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (window ``window``) for the plot."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot(curves: dict[str, Curve], results: dict[str, float], cfg: argparse.Namespace) -> Path:
    """Write ``imaml.png``: meta-train query loss / accuracy per API, meta-test accuracy lines."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    window = max(1, cfg.meta_steps // 20)
    for k, (api, curve) in enumerate(curves.items()):
        color = f'C{k}'
        steps = range(1, len(curve) + 1)
        style = {'color': color, 'lw': 4 if k == 0 else 1.5, 'alpha': 0.5 if k == 0 else 1.0}
        ax_loss.plot(steps, smooth([c[0] for c in curve], window), label=f'{api} API', **style)
        ax_acc.plot(
            steps,
            smooth([c[1] for c in curve], window),
            label=f'{api} API, meta-train tasks',
            **style,
        )
        ax_acc.axhline(
            results[f'{api}_imaml'],
            color=color,
            ls='--',
            lw=1,
            label=f'{api} API, meta-test: {results[f"{api}_imaml"]:.3f}',
        )
        ax_acc.axhline(
            results[f'{api}_baseline'],
            color=color,
            ls=':',
            lw=1,
            label=f'no meta-learning, meta-test: {results[f"{api}_baseline"]:.3f}',
        )
    ax_acc.axhline(1.0 / cfg.ways, color='k', lw=0.8, ls='-.', label='chance')
    ax_loss.set_title('query loss after adaptation (moving average)')
    ax_acc.set_title('query accuracy after adaptation (moving average)')
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel('meta-step')
        ax.legend(fontsize=7)
    fig.suptitle(f'iMAML, {cfg.ways}-way {cfg.shots}-shot rotated digits (lambda={cfg.reg})')
    fig.tight_layout()
    path = output_dir(cfg.out) / 'imaml.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Meta-train with each API, compare with no meta-learning, write the plot."""
    parser = argparse.ArgumentParser(
        description='iMAML on rotated digits (functional and module API)'
    )
    add_common_args(parser, __file__)
    parser.add_argument('--api', choices=['functional', 'module', 'both'], default='both')
    parser.add_argument('--ways', type=int, default=5)
    parser.add_argument('--shots', type=int, default=5)
    parser.add_argument('--queries', type=int, default=15)
    parser.add_argument('--meta-steps', type=int, default=400)
    parser.add_argument('--meta-batch', type=int, default=8)
    parser.add_argument('--meta-lr', type=float, default=1e-3)
    parser.add_argument('--inner-steps', type=int, default=20)
    parser.add_argument('--inner-lr', type=float, default=0.05)
    parser.add_argument('--reg', type=float, default=1.0, help='proximal regularization lambda')
    parser.add_argument('--cg-steps', type=int, default=5)
    parser.add_argument('--test-tasks', type=int, default=300)
    cfg = parser.parse_args(argv)
    if cfg.quick:
        cfg.meta_steps, cfg.meta_batch, cfg.test_tasks = 150, 4, 100
    set_threads(1)

    x, y = rotated_digits()
    train_classes = [d + 10 * k for k in range(4) for d in range(7)]
    test_classes = [d + 10 * k for k in range(4) for d in range(7, 10)]
    apis = ['functional', 'module'] if cfg.api == 'both' else [cfg.api]
    results: dict[str, float] = {}
    curves: dict[str, Curve] = {}
    print(
        f'{cfg.ways}-way {cfg.shots}-shot, {len(train_classes)} meta-train / '
        f'{len(test_classes)} meta-test classes'
    )
    for api in apis:
        gen_train = torch.Generator().manual_seed(cfg.seed)
        gen_test = torch.Generator().manual_seed(cfg.seed + 1)
        train_tasks = TaskSampler(x, y, train_classes, cfg.ways, cfg.shots, cfg.queries, gen_train)
        test_tasks = TaskSampler(x, y, test_classes, cfg.ways, cfg.shots, cfg.queries, gen_test)
        start = time.perf_counter()
        run = train_functional if api == 'functional' else train_module
        meta_acc, base_acc, curves[api] = run(cfg, train_tasks, test_tasks)
        print(
            f'[{api:>10} API] meta-test accuracy: iMAML {meta_acc:.3f} vs no meta-learning '
            f'{base_acc:.3f} ({time.perf_counter() - start:.1f}s)'
        )
        results[f'{api}_imaml'], results[f'{api}_baseline'] = meta_acc, base_acc
    print(f'plot written to {plot(curves, results, cfg)}')
    return results


if __name__ == '__main__':
    main()
