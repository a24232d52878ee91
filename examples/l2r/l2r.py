r"""Learning to reweight examples (Ren et al., ICML 2018) on imbalanced, noisy digits.

"Learning to Reweight Examples for Robust Deep Learning" (Ren, Zeng, Yang and Urtasun) weights
each training example of a mini-batch by how much a virtual SGD step on it would lower the loss
on a small clean validation set:

.. math::

    \theta'(\epsilon) = \theta - \alpha \nabla_\theta \sum_i \epsilon_i \ell_i(\theta), \qquad
    \tilde w_i = \max\Bigl(0, -\frac{\partial}{\partial \epsilon_i}
        \ell_\text{val}\bigl(\theta'(\epsilon)\bigr)\Big|_{\epsilon = 0}\Bigr), \qquad
    w_i = \frac{\tilde w_i}{\sum_j \tilde w_j},

then takes a real step on :math:`\sum_i w_i \ell_i(\theta)`. The virtual step is a
``torchopt.MetaSGD`` step (differentiable in :math:`\epsilon`), undone with
``torchopt.recover_state_dict``.

Data: digits 4 (majority, 95 %) vs 9 from scikit-learn, 20 % of the training labels flipped, a clean
validation set of 5 images per class and a balanced test set. Baseline: the same network and
optimizer trained on the plain (unweighted) loss of the same training set.

    python examples/l2r/l2r.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_common_args, output_dir, progress, pyplot, set_threads  # noqa: E402
from digits_data import ImbalancedSplit, imbalanced_noisy_digits  # noqa: E402

import torchopt  # noqa: E402

__all__ = ['accuracy', 'main', 'make_net', 'reweight', 'train']


def make_net() -> nn.Module:
    """A small two-class MLP on flattened 8x8 digits."""
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Classification accuracy of ``net`` on ``(x, y)``."""
    with torch.no_grad():
        return (net(x).argmax(-1) == y).float().mean().item()


def reweight(
    net: nn.Module,
    meta_opt: torchopt.MetaSGD,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
) -> torch.Tensor:
    """The L2R weights of the examples ``(x, y)`` (non-negative, summing to 1 or all zero)."""
    state = torchopt.extract_state_dict(net, by='reference')
    eps = torch.zeros(len(y), requires_grad=True)
    meta_opt.step((eps * F.cross_entropy(net(x), y, reduction='none')).sum())  # virtual step
    val_loss = F.cross_entropy(net(x_val), y_val)
    (grad_eps,) = torch.autograd.grad(val_loss, eps)
    torchopt.recover_state_dict(net, state)  # undo the virtual step
    weights = torch.clamp(-grad_eps, min=0.0)
    total = weights.sum()
    return weights / total if total > 0 else weights


def train(
    data: ImbalancedSplit, args: argparse.Namespace, reweighted: bool, generator: torch.Generator
) -> tuple[nn.Module, list[float]]:
    """Train a fresh network; returns it and the test accuracy after every ``eval_every`` steps."""
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    meta_opt = torchopt.MetaSGD(net, lr=args.lr)
    x, y = data.train
    curve = []
    for step in progress(range(1, args.steps + 1), 'L2R' if reweighted else 'plain'):
        idx = torch.randint(len(y), (args.batch_size,), generator=generator)
        xb, yb = x[idx], y[idx]
        if reweighted:
            weights = reweight(net, meta_opt, xb, yb, *data.val)
        else:
            weights = torch.full((len(yb),), 1.0 / len(yb))
        loss = (weights * F.cross_entropy(net(xb), yb, reduction='none')).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append(accuracy(net, *data.test))
    return net, curve


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train with L2R and with the plain loss; compare balanced test accuracies."""
    parser = argparse.ArgumentParser(description='Learning to reweight on imbalanced noisy digits')
    add_common_args(parser, __file__)
    parser.add_argument('--steps', type=int, default=600)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=0.02)
    parser.add_argument('--majority', type=float, default=0.95)
    parser.add_argument('--noise', type=float, default=0.2)
    parser.add_argument('--val-per-class', type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 300
    args.eval_every = max(1, args.steps // 30)
    set_threads()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    data = imbalanced_noisy_digits(
        majority=args.majority, noise=args.noise, val_per_class=args.val_per_class, seed=args.seed
    )
    n_minor = int((data.train_clean_labels == 1).sum())
    n_flipped = int((data.train.y != data.train_clean_labels).sum())
    print(
        f'digits 4 vs 9: {len(data.train.y)} training images ({n_minor} nines), '
        f'{n_flipped} labels flipped, {len(data.val.y)} clean validation images, '
        f'{len(data.test.y)} balanced test images'
    )
    l2r_net, l2r_curve = train(data, args, reweighted=True, generator=gen)
    plain_net, plain_curve = train(data, args, reweighted=False, generator=gen)
    l2r, plain = accuracy(l2r_net, *data.test), accuracy(plain_net, *data.test)
    print('balanced test accuracy:')
    print(f'  learning to reweight  {l2r:.3f}')
    print(f'  plain training        {plain:.3f}   (baseline)')

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [min(args.eval_every * (k + 1), args.steps) for k in range(len(l2r_curve))]
    ax.plot(steps, l2r_curve, label='learning to reweight')
    ax.plot(steps, plain_curve, label='plain training')
    ax.axhline(0.5, color='k', lw=0.8, ls=':', label='chance')
    ax.set_xlabel('training step')
    ax.set_ylabel('balanced test accuracy')
    ax.set_title(f'4 vs 9, {args.majority:.0%} imbalance, {args.noise:.0%} label noise')
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = output_dir(args.out) / 'l2r.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f'plot written to {path}')
    return {'l2r': l2r, 'baseline': plain}


if __name__ == '__main__':
    main()
