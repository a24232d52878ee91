r"""An ensemble of networks trained in parallel with ``torch.func.vmap`` and functional Adam.

``torch.func.stack_module_state`` stacks the parameters of ``E`` identically shaped networks
along a new leading dimension; ``vmap(grad(loss))`` computes all ``E`` gradients in one
vectorised call; and since Adam is element-wise, one functional ``torchopt.adam`` state over the
stacked tensors is exactly ``E`` independent Adam optimizers:

.. math::

    \Theta = [\theta_1; \dots; \theta_E], \qquad
    G = \operatorname{vmap}_e\bigl(\nabla_{\theta_e} \mathcal{L}(\theta_e; x, y)\bigr), \qquad
    \Theta \leftarrow \Theta + \operatorname{Adam}(G).

The script trains the ensemble on ten-class scikit-learn digits both ways (vectorised, and one
network after another with the same initialisations and mini-batches), checks that the final
parameters agree, times both, and compares the ensemble's test accuracy (averaged
probabilities) with that of its members.

    python examples/func/ensemble_vmap.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_common_args, output_dir, progress, pyplot, set_threads  # noqa: E402
from digits_data import digits_classification  # noqa: E402

import torchopt  # noqa: E402

__all__ = ['main', 'make_net', 'train_one_by_one', 'train_vmap']


def make_net() -> nn.Module:
    """A ten-class MLP on flattened 8x8 digits."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train_vmap(models, batches, lr: float) -> tuple[dict, torch.Tensor]:
    """Train all ``models`` at once; returns the stacked parameters and losses ``(steps, E)``."""
    stacked, _ = stack_module_state(models)
    params = {k: v.detach() for k, v in stacked.items()}
    base = copy.deepcopy(models[0]).to('meta')

    def loss_fn(p, x, y):
        loss = F.cross_entropy(functional_call(base, p, (x,)), y)
        return loss, loss.detach()  # (differentiated output, auxiliary copy for the log)

    grad_and_loss = vmap(grad(loss_fn, has_aux=True), in_dims=(0, None, None))
    optimizer = torchopt.adam(lr=lr)
    state = optimizer.init(params)
    losses = []
    for x, y in progress(batches, 'vmap ensemble'):
        grads, loss = grad_and_loss(params, x, y)
        updates, state = optimizer.update(grads, state, inplace=False)
        params = torchopt.apply_updates(params, updates, inplace=False)
        losses.append(loss)
    return params, torch.stack(losses)


def train_one_by_one(models, batches, lr: float) -> dict:
    """Train each model separately (same mini-batches); returns the parameters stacked."""
    finals = []
    for model in progress(models, 'one by one'):
        params = {k: v.detach() for k, v in model.named_parameters()}
        optimizer = torchopt.adam(lr=lr)
        state = optimizer.init(params)
        for x, y in batches:

            def loss(p, model=model, x=x, y=y):
                return F.cross_entropy(functional_call(model, p, (x,)), y)

            grads = grad(loss)(params)
            updates, state = optimizer.update(grads, state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        finals.append(params)
    return {k: torch.stack([p[k] for p in finals]) for k in finals[0]}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train an ensemble with vmap and one by one; compare parameters, time and accuracy."""
    parser = argparse.ArgumentParser(description='Ensemble training with torch.func.vmap')
    add_common_args(parser, __file__)
    parser.add_argument('--members', type=int, default=16)
    parser.add_argument('--steps', type=int, default=500)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.steps = 8, 200
    set_threads()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train, test = digits_classification(seed=args.seed)
    models = [make_net() for _ in range(args.members)]
    batches = []
    for _ in range(args.steps):
        idx = torch.randint(len(train.y), (args.batch_size,), generator=gen)
        batches.append((train.x[idx], train.y[idx]))

    train_vmap(models, batches[:2], args.lr)  # warm-up: one-time costs out of the timings
    train_one_by_one(models[:1], batches[:2], args.lr)
    start = time.perf_counter()
    params, losses = train_vmap(models, batches, args.lr)
    t_vmap = time.perf_counter() - start
    start = time.perf_counter()
    reference = train_one_by_one(models, batches, args.lr)
    t_loop = time.perf_counter() - start
    diff = max((params[k] - reference[k]).abs().max().item() for k in params)

    base = copy.deepcopy(models[0]).to('meta')
    with torch.no_grad():
        logits = vmap(lambda p: functional_call(base, p, (test.x,)))(params)  # (E, n, 10)
    member_acc = (logits.argmax(-1) == test.y).float().mean(dim=1)
    ensemble_acc = (logits.softmax(-1).mean(0).argmax(-1) == test.y).float().mean().item()

    print(f'{args.members} networks, {args.steps} Adam steps each:')
    print(f'  vmap (all at once)   {t_vmap:6.2f} s')
    print(f'  one by one           {t_loop:6.2f} s   ({t_loop / t_vmap:.1f}x slower)')
    print(f'  max |parameter difference| between the two: {diff:.2e}')
    print('test accuracy:')
    print(f'  ensemble (mean of probabilities)  {ensemble_acc:.3f}')
    print(
        f'  members: mean {member_acc.mean():.3f}, min {member_acc.min():.3f}, '
        f'max {member_acc.max():.3f}   (baseline: a single network)'
    )

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(losses.numpy(), lw=0.7)
    ax1.set_yscale('log')
    ax1.set_xlabel('step')
    ax1.set_ylabel('mini-batch loss (one line per member)')
    ax2.bar(range(args.members), member_acc.numpy(), color='C0', label='members')
    ax2.axhline(ensemble_acc, color='C3', label='ensemble')
    ax2.set_ylim(max(0.0, float(member_acc.min()) - 0.05), 1.0)
    ax2.set_xlabel('member')
    ax2.set_ylabel('test accuracy')
    ax2.legend(fontsize=8, loc='lower right')
    fig.suptitle(f'Ensemble trained with vmap: {t_loop / t_vmap:.1f}x faster than one by one')
    fig.tight_layout()
    path = output_dir(args.out) / 'ensemble_vmap.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f'plot written to {path}')
    return {
        'ensemble': ensemble_acc,
        'member_mean': member_acc.mean().item(),
        'max_param_diff': diff,
        'speedup': t_loop / t_vmap,
    }


if __name__ == '__main__':
    main()
