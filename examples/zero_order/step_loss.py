r"""Evolution strategies through a non-differentiable objective: the 0-1 loss of a classifier.

The misclassification rate of a linear classifier,

.. math::

    L(w) = \frac{1}{n} \sum_i \mathbb{1}[\, y_i \, x_i^\top w < 0 \,],

is piecewise constant in :math:`w`: autograd gives a gradient of zero (here: none at all), so
gradient descent cannot move. Zero-order estimation differentiates the Gaussian smoothing
:math:`L_\sigma(w) = \mathbb{E}_{u \sim \mathcal{N}(0, I)} L(w + \sigma u)` instead, which for
this loss has a closed form (:math:`\Phi` the standard normal CDF, :math:`\varphi` its density):

.. math::

    L_\sigma(w) = \frac{1}{n} \sum_i \Phi\!\Bigl(-\frac{y_i x_i^\top w}{\sigma \|x_i\|}\Bigr),
    \qquad
    \nabla L_\sigma(w) = -\frac{1}{n} \sum_i
        \varphi\!\Bigl(\frac{y_i x_i^\top w}{\sigma \|x_i\|}\Bigr) \frac{y_i x_i}{\sigma \|x_i\|}.

The script

1. checks that closed form against a central finite difference of :math:`L_\sigma`,
2. compares the three ES estimators (``torchopt.diff.zero_order``) with it, and
3. trains the classifier on the 0-1 loss itself with ES gradients and Adam, next to training
   with the exact smoothed gradient.

Run ``python examples/zero_order/step_loss.py`` (``--quick`` finishes in a few seconds). The plot
``outputs/step_loss.png`` (or ``--out DIR``) shows the estimators' error against the number of
samples and the two training curves.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_common_args, output_dir, progress, pyplot, set_threads  # noqa: E402

import torchopt  # noqa: E402

__all__ = [
    'check_closed_form',
    'compare_estimators',
    'main',
    'make_data',
    'smoothed_loss_and_grad',
    'train',
    'zero_one_loss',
]

NORMAL = torch.distributions.Normal(0.0, 1.0)


def make_data(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two overlapping Gaussian classes with labels +-1 (generated, no download)."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(dim, generator=gen, dtype=torch.float64)
    direction /= direction.norm()
    y = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64) + 1.5 * y[:, None] * direction
    return x, y


def zero_one_loss(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Misclassification rate: a step function of ``w`` (no autograd gradient)."""
    return (y * (x @ w) < 0).to(w.dtype).mean()


def smoothed_loss_and_grad(
    w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form Gaussian smoothing of the 0-1 loss and its exact gradient."""
    scale = sigma * x.norm(dim=1)
    margin = y * (x @ w) / scale
    loss = NORMAL.cdf(-margin).mean()
    density = torch.exp(-0.5 * margin**2) / math.sqrt(2 * math.pi)
    grad = -(density * y / scale) @ x / len(y)
    return loss, grad


def check_closed_form(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sigma: float) -> float:
    """Relative error of the closed-form gradient against a central finite difference."""
    _, grad = smoothed_loss_and_grad(w, x, y, sigma)
    eps, fd = 1e-6, torch.empty_like(w)
    for k in range(len(w)):
        e = torch.zeros_like(w)
        e[k] = eps
        plus, _ = smoothed_loss_and_grad(w + e, x, y, sigma)
        minus, _ = smoothed_loss_and_grad(w - e, x, y, sigma)
        fd[k] = (plus - minus) / (2 * eps)
    return float((grad - fd).norm() / fd.norm())


def compare_estimators(
    w: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    sizes: tuple[int, ...],
    trials: int,
) -> dict[str, list[float]]:
    """Print, and return per method, the mean relative error of ES estimates for each size."""
    _, exact = smoothed_loss_and_grad(w, x, y, sigma)
    plain = zero_one_loss(w.clone().requires_grad_(), x, y)
    print(
        f'autograd: the 0-1 loss has requires_grad={plain.requires_grad} '
        '(its gradient is zero almost everywhere: nothing to descend on)'
    )
    print(
        f'\nES estimate vs exact gradient of the smoothed loss (sigma={sigma}, '
        f'mean over {trials} estimates)'
    )
    print(f'{"method":>11} {"N":>6} {"rel. error":>11} {"cosine":>7} {"ms":>7}')
    table: dict[str, list[float]] = {}
    for method in ('naive', 'forward', 'antithetic'):
        table[method] = []
        for n in sizes:
            loss = torchopt.diff.zero_order(NORMAL, method=method, num_samples=n, sigma=sigma)(
                zero_one_loss
            )
            errors, cosines = [], []
            start = time.perf_counter()
            for _ in range(trials):
                w_req = w.clone().requires_grad_()
                loss(w_req, x, y).backward()
                errors.append(float((w_req.grad - exact).norm() / exact.norm()))
                cosines.append(float(torch.cosine_similarity(w_req.grad, exact, dim=0)))
            ms = (time.perf_counter() - start) / trials * 1e3
            print(
                f'{method:>11} {n:>6} {sum(errors) / trials:>11.3f} '
                f'{sum(cosines) / trials:>7.3f} {ms:>7.2f}'
            )
            table[method].append(sum(errors) / trials)
    return table


def train(
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    steps: int,
    num_samples: int,
    use_es: bool,
    seed: int,
) -> list[float]:
    """Adam on the 0-1 loss with ES (or exact smoothed) gradients; the 0-1 loss after each step."""
    torch.manual_seed(seed)
    w = torch.zeros(x.shape[1], dtype=x.dtype)
    w[0] = -1.0  # a bad start
    w.requires_grad_()
    optimizer = torchopt.Adam([w], lr=0.05)
    es_loss = torchopt.diff.zero_order(
        NORMAL, method='antithetic', num_samples=num_samples, sigma=sigma
    )(zero_one_loss)
    history = []
    for _ in progress(range(steps), 'ES' if use_es else 'exact gradient'):
        optimizer.zero_grad()
        if use_es:
            es_loss(w, x, y).backward()
        else:
            w.grad = smoothed_loss_and_grad(w.detach(), x, y, sigma)[1]
        optimizer.step()
        history.append(float(zero_one_loss(w.detach(), x, y)))
    return history


def plot(
    table: dict[str, list[float]],
    sizes: tuple[int, ...],
    es: list[float],
    exact: list[float],
    sigma: float,
    out: Path,
) -> Path:
    """Write ``step_loss.png``: estimator error vs samples, and the two training curves."""
    plt = pyplot()
    fig, (ax_err, ax_train) = plt.subplots(1, 2, figsize=(10, 4))
    for method, errors in table.items():
        ax_err.loglog(sizes, errors, marker='o', label=method)
    ax_err.loglog(
        sizes,
        [table['naive'][0] * (sizes[0] / n) ** 0.5 for n in sizes],
        'k:',
        lw=0.8,
        label=r'$\propto N^{-1/2}$',
    )
    ax_err.set_xlabel('samples N')
    ax_err.set_ylabel('relative error vs exact smoothed gradient')
    ax_err.set_title(f'ES gradient estimators (sigma={sigma})')
    ax_err.legend(fontsize=8)
    steps = range(1, len(es) + 1)
    ax_train.plot(steps, es, label='ES (N=100, antithetic)')
    ax_train.plot(steps, exact, ls='--', label='exact smoothed gradient')
    ax_train.set_xlabel('Adam step')
    ax_train.set_ylabel('0-1 training loss')
    ax_train.set_title('training on the 0-1 loss')
    ax_train.legend(fontsize=8)
    fig.tight_layout()
    path = output_dir(out) / 'step_loss.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Check the closed form, compare the estimators, train with ES; write the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, __file__)
    args = parser.parse_args(argv)
    set_threads(1)
    n, dim = (500, 10) if args.quick else (2000, 50)
    steps, trials = (100, 5) if args.quick else (400, 10)
    sizes = (10, 100, 1000) if args.quick else (10, 100, 1000, 10000)
    sigma = 0.5

    x, y = make_data(n, dim, args.seed)
    w = torch.randn(dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    print(f'data: n={n}, d={dim}; 0-1 loss at a random w: {float(zero_one_loss(w, x, y)):.3f}')
    fd_error = check_closed_form(w, x, y, sigma)
    print(f'closed-form smoothed gradient vs central finite difference: rel. error {fd_error:.1e}')
    torch.manual_seed(args.seed)  # the ES noise of the comparison (train() seeds its own)
    table = compare_estimators(w, x, y, sigma, sizes, trials)

    print(f'\ntraining on the 0-1 loss with Adam (lr=0.05, {steps} steps, sigma={sigma})')
    es = train(x, y, sigma, steps, num_samples=100, use_es=True, seed=args.seed)
    exact = train(x, y, sigma, steps, num_samples=100, use_es=False, seed=args.seed)
    print(f'{"step":>6} {"ES (N=100, antithetic)":>24} {"exact smoothed gradient":>24}')
    for k in sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps - 1}):
        print(f'{k + 1:>6} {es[k]:>24.3f} {exact[k]:>24.3f}')
    print(f'plot written to {plot(table, sizes, es, exact, sigma, args.out)}')
    return {
        'fd_rel_error': fd_error,
        'es_first': es[0],
        'es_final': es[-1],
        'exact_final': exact[-1],
    }


if __name__ == '__main__':
    main()
