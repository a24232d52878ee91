r"""Learn a per-step learning-rate schedule through a 1000-step training run, in bounded memory.

The inner problem trains an MLP on scikit-learn's digits with Adam for :math:`K` steps, step
:math:`t` using its own learning rate :math:`\eta_t = e^{s_t}`:

.. math::

    \theta_{t+1} = \theta_t + \eta_t\, \operatorname{Adam}_t\bigl(\nabla \ell_\text{train}
        (\theta_t; B_t)\bigr), \qquad t = 0, \dots, K - 1,

and the schedule :math:`s \in \mathbb{R}^K` is learned by gradient descent on the validation
loss at the end of the run, :math:`\ell_\text{val}(\theta_K(s))`, with the hyper-gradient
:math:`\partial \ell_\text{val} / \partial s` taken through all :math:`K` steps (Maclaurin,
Duvenaud & Adams, *Gradient-based hyperparameter optimization through reversible learning*,
ICML 2015, do the same by reversing SGD with momentum exactly). Recording the run would keep
every step's activations and Adam state alive; ``torchopt.unroll(..., checkpoints='sqrt')``
keeps :math:`\lceil\sqrt K\rceil` carries (32 at K = 1000) and recomputes the rest in the
backward pass.

Baseline: the best constant learning rate of a log-spaced sweep, evaluated by the same final
validation loss; the schedule starts from it. The test split is used only for the report.

    python examples/long_horizon/lr_schedule.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_common_args, output_dir, progress, pyplot, set_threads  # noqa: E402
from digits_data import Split, digits_classification  # noqa: E402

import torchopt  # noqa: E402

__all__ = ['InnerRun', 'main', 'make_net']


def make_net() -> nn.Module:
    """A ten-class MLP on flattened 8x8 digits."""
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))


class InnerRun:
    """The K-step training run as a function of the log learning rates ``s`` (shape ``(K,)``)."""

    def __init__(self, train: Split, steps: int, batch_size: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.net = make_net()
        self.init = {k: v.detach() for k, v in self.net.named_parameters()}
        g = torch.Generator().manual_seed(seed)
        self.batches = torch.randint(len(train.y), (steps, batch_size), generator=g)
        self.train, self.steps = train, steps
        # lr=1: the rate e^{s_t} scales the update below. eps_root keeps d sqrt(nu) finite at 0.
        self.adam = torchopt.adam(lr=1.0, eps_root=1e-12, moment_requires_grad=True)

    def step_fn(self, log_lr: torch.Tensor):
        """``step(carry, t)``: one Adam step on mini-batch ``t`` with the rate ``e^{s_t}``."""

        def step(carry, t):
            params, state = carry
            idx = self.batches[t]
            logits = functional_call(self.net, params, (self.train.x[idx],))
            loss = F.cross_entropy(logits, self.train.y[idx])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            updates, state = self.adam.update(dict(zip(params, grads)), state, inplace=False)
            eta = log_lr[t].exp()
            updates = {k: eta * u for k, u in updates.items()}
            return torchopt.apply_updates(params, updates, inplace=False), state

        return step

    def carry0(self):
        params = {k: v.clone().requires_grad_() for k, v in self.init.items()}
        return params, self.adam.init(params)

    def final_params(self, log_lr: torch.Tensor, checkpoints='sqrt', truncate=None) -> dict:
        """The parameters after the run (differentiable in ``log_lr`` unless ``truncate=0``)."""
        params, _ = torchopt.unroll(
            self.step_fn(log_lr),
            self.carry0(),
            self.steps,
            checkpoints=checkpoints,
            truncate=truncate,
        )
        return params

    def loss(self, params: dict, split: Split) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.net, params, (split.x,)), split.y)

    def accuracy(self, params: dict, split: Split) -> float:
        with torch.no_grad():
            logits = functional_call(self.net, params, (split.x,))
            return (logits.argmax(-1) == split.y).float().mean().item()

    def curve(self, log_lr: torch.Tensor, val: Split, every: int) -> list[float]:
        """Validation loss during the run, every ``every`` steps (nothing recorded)."""
        step, carry, out = self.step_fn(log_lr.detach()), self.carry0(), []
        for t in range(self.steps):
            carry = step(carry, t)
            torchopt.stop_gradient(carry)  # keep the values, drop the graph
            if (t + 1) % every == 0:
                with torch.no_grad():
                    out.append(self.loss(carry[0], val).item())
        return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Sweep constant rates, learn the schedule from the best one, compare validation losses."""
    parser = argparse.ArgumentParser(description='Learn a per-step learning-rate schedule')
    add_common_args(parser, __file__)
    parser.add_argument('--steps', type=int, default=1000, help='length K of the training run')
    parser.add_argument('--meta-steps', type=int, default=40)
    parser.add_argument('--meta-lr', type=float, default=0.05)
    parser.add_argument(
        '--smooth',
        type=float,
        default=0.01,
        help='weight of the penalty on squared differences of the log rates',
    )
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--checkpoints', default='sqrt', help="an int or 'sqrt'")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.meta_steps = 50, 8
    checkpoints = args.checkpoints if args.checkpoints == 'sqrt' else int(args.checkpoints)
    set_threads()
    train_val, test = digits_classification(seed=args.seed)
    n_val = len(train_val.y) // 4
    val, train = (
        Split(train_val.x[:n_val], train_val.y[:n_val]),
        Split(train_val.x[n_val:], train_val.y[n_val:]),
    )
    run = InnerRun(train, args.steps, args.batch_size, args.seed)
    slots = math.isqrt(args.steps - 1) + 1 if checkpoints == 'sqrt' else checkpoints
    print(
        f'digits: {len(train.y)} training, {len(val.y)} validation, {len(test.y)} test images; '
        f'K = {args.steps} Adam steps, {slots} checkpoints'
    )

    rates = torch.logspace(-3.5, -0.5, 7 if args.quick else 13).tolist()
    sweep = []
    for lr in progress(rates, 'constant-rate sweep'):
        log_lr = torch.full((args.steps,), math.log(lr))
        sweep.append(run.loss(run.final_params(log_lr, truncate=0), val).item())
    best = min(range(len(rates)), key=sweep.__getitem__)
    print('constant rate sweep (final validation loss):')
    for lr, v in zip(rates, sweep):
        print(f'  {lr:.2e}  {v:.4f}{"   <- best" if v == sweep[best] else ""}')

    log_lr = torch.full((args.steps,), math.log(rates[best]), requires_grad=True)
    meta_opt = torch.optim.Adam([log_lr], lr=args.meta_lr)
    history = []
    for _ in progress(range(args.meta_steps), 'meta-training'):
        loss = run.loss(run.final_params(log_lr, checkpoints=checkpoints), val)
        penalty = args.smooth * (log_lr[1:] - log_lr[:-1]).pow(2).sum()
        meta_opt.zero_grad()
        (loss + penalty).backward()
        meta_opt.step()
        history.append(loss.item())
    final = run.final_params(log_lr.detach(), truncate=0)
    const = run.final_params(torch.full((args.steps,), math.log(rates[best])), truncate=0)
    learned_val, const_val = run.loss(final, val).item(), run.loss(const, val).item()
    history.append(learned_val)
    learned_acc, const_acc = run.accuracy(final, test), run.accuracy(const, test)
    learned_test, const_test = run.loss(final, test).item(), run.loss(const, test).item()
    print(
        f'final validation loss: learned schedule {learned_val:.4f}, best constant rate '
        f'{rates[best]:.2e} {const_val:.4f}'
    )
    print(
        f'test loss:             learned schedule {learned_test:.4f}, best constant rate '
        f'{const_test:.4f}'
    )
    print(
        f'test accuracy:         learned schedule {learned_acc:.3f}, best constant rate '
        f'{const_acc:.3f}'
    )

    every = max(1, args.steps // 50)
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].semilogy(log_lr.detach().exp().numpy(), label='learned')
    axes[0].axhline(rates[best], color='k', ls='--', lw=1, label='best constant')
    axes[0].set(xlabel='training step t', ylabel='learning rate', title='schedule')
    xs = [every * (i + 1) for i in range(args.steps // every)]
    axes[1].semilogy(xs, run.curve(log_lr, val, every), label='learned schedule')
    axes[1].semilogy(
        xs,
        run.curve(torch.full((args.steps,), math.log(rates[best])), val, every),
        label=f'constant {rates[best]:.1e}',
    )
    axes[1].set(xlabel='training step', ylabel='validation loss', title='training run')
    axes[2].plot(history, label='learned schedule')
    axes[2].axhline(const_val, color='k', ls='--', lw=1, label='best constant')
    axes[2].set(xlabel='meta-iteration', ylabel='final validation loss', title='meta-training')
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = output_dir(args.out) / 'lr_schedule.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f'plot written to {path}')
    return {
        'learned_val': learned_val,
        'constant_val': const_val,
        'learned_test': learned_test,
        'constant_test': const_test,
        'learned_test_acc': learned_acc,
        'constant_test_acc': const_acc,
        'best_constant_lr': rates[best],
    }


if __name__ == '__main__':
    main()
