r"""Statistical accuracy of the estimators on a 100-d quadratic, against closed-form theory.

For :math:`f(\theta) = \tfrac12 \theta^\top A \theta + b^\top \theta + c` with gradient
:math:`g = A\theta + b` and :math:`u \sim \mathcal{N}(0, I_d)`, the mean squared error of a
single-sample estimate is (fourth and sixth Gaussian moments)

.. math::

    \text{antithetic:}\ & (d + 1) \|g\|^2 \\
    \text{forward:}\ & (d + 1) \|g\|^2 + \tfrac{\sigma^2}{4} (d + 4)
        \bigl((\operatorname{tr} A)^2 + 2 \operatorname{tr} A^2\bigr) \\
    \text{naive:}\ & \text{forward} + d f(\theta)^2 / \sigma^2
        + (d + 2) f(\theta) \operatorname{tr} A

and an average of :math:`N` samples divides it by :math:`N`. All three are unbiased.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchopt_zero import zero_order

DTYPE = torch.float64
D = 100


def make_problem():
    gen = torch.Generator().manual_seed(2024)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=DTYPE))
    eig = torch.linspace(0.5, 2.0, D, dtype=DTYPE)
    a = (q * eig) @ q.T
    a = (a + a.T) / 2
    b = torch.randn(D, generator=gen, dtype=DTYPE)
    theta = 0.3 * torch.randn(D, generator=gen, dtype=DTYPE)
    c = -0.5 * float(theta @ a @ theta + b @ theta) + 0.7  # keeps f(theta) = 0.7 (naive term)

    def f(x):
        return 0.5 * x @ a @ x + b @ x + c

    return f, a, theta, a @ theta + b


def theory_mse(method, f0, a, g, sigma):
    """Mean squared error of one sample (see the module docstring)."""
    tr, tr2, g2 = float(torch.trace(a)), float(torch.trace(a @ a)), float(g @ g)
    mse = (D + 1) * g2
    if method in ('forward', 'naive'):
        mse += sigma**2 / 4 * (D + 4) * (tr**2 + 2 * tr2)
    if method == 'naive':
        mse += D * f0**2 / sigma**2 + (D + 2) * f0 * tr
    return mse


def squared_errors(method, num_samples, sigma, trials, seed):
    f, _, theta, g = make_problem()
    fn = zero_order(
        torch.distributions.Normal(0.0, 1.0), method=method, num_samples=num_samples, sigma=sigma
    )(f)
    torch.manual_seed(seed)
    errors = []
    for _ in range(trials):
        x = theta.clone().requires_grad_()
        fn(x).backward()
        errors.append(float((x.grad - g).pow(2).sum()))
    return torch.tensor(errors, dtype=DTYPE)


@pytest.mark.parametrize(
    ('method', 'num_samples', 'sigma'),
    [
        ('antithetic', 10, 1.0),
        ('antithetic', 100, 0.1),
        ('forward', 100, 0.5),
        ('forward', 30, 0.01),
        ('naive', 100, 1.0),
        ('naive', 100, 0.5),
    ],
)
def test_relative_rms_error_matches_theory(method, num_samples, sigma):
    f, a, theta, g = make_problem()
    errors = squared_errors(method, num_samples, sigma, trials=200, seed=7)
    expected = theory_mse(method, float(f(theta)), a, g, sigma) / num_samples
    # Statistical tolerance: 5 standard errors of the empirical mean squared error.
    tol = 5 * float(errors.std()) / math.sqrt(len(errors))
    assert abs(float(errors.mean()) - expected) <= tol, (float(errors.mean()), expected, tol)
    assert tol < 0.25 * expected  # the test has power: a 25% deviation would be caught
    rel_rms, rel_theory = math.sqrt(errors.mean()) / g.norm(), math.sqrt(expected) / g.norm()
    assert abs(rel_rms / rel_theory - 1) < 0.15
    if method == 'antithetic':  # the rule of thumb: sqrt(d / N)
        assert rel_theory == pytest.approx(math.sqrt((D + 1) / num_samples))


def test_estimators_are_unbiased():
    _, _, _, g = make_problem()
    for method in ('antithetic', 'forward'):
        f, _, theta, _ = make_problem()
        fn = zero_order(
            torch.distributions.Normal(0.0, 1.0), method=method, num_samples=4000, sigma=0.5
        )(f)
        torch.manual_seed(3)
        x = theta.clone().requires_grad_()
        fn(x).backward()
        # per-coordinate standard error is about |g| sqrt(1/N): check the mean is within it
        assert float((x.grad - g).mean().abs()) < 5 * float(g.norm()) / math.sqrt(4000 * D)


def test_forward_error_at_small_sigma_is_fixed():
    """Upstream multiplied by sigma and reused differences: its error stayed 1.0 at sigma=0.01."""
    f, a, theta, g = make_problem()
    errors = squared_errors('forward', 1000, 0.01, trials=3, seed=0)
    rel = errors.sqrt() / g.norm()
    assert float(rel.max()) <= 0.45  # theory: sqrt(101 / 1000) = 0.32
    assert math.sqrt(theory_mse('forward', float(f(theta)), a, g, 0.01) / 1000) / g.norm() < 0.33


def test_antithetic_variance_below_naive():
    naive = squared_errors('naive', 50, 0.5, trials=20, seed=11)
    antithetic = squared_errors('antithetic', 50, 0.5, trials=20, seed=11)
    assert float(antithetic.mean()) < 0.5 * float(naive.mean())
