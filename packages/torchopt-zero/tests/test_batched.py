"""``zero_order(..., batched=True)``: a hand-vectorised objective, evaluated without ``vmap``.

Checked against the plain-loop reference formulas (the same noise, recorded), against the
per-sample objective under the default ``vmap`` path (same seed, same numbers), for a pytree
with a frozen leaf and an extra argument, in chunks, and for its argument errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchopt_zero import zero_order

DTYPE = torch.float64
METHODS = ('naive', 'forward', 'antithetic')


def quadratic(dim: int = 6):
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(dim, dim, generator=gen, dtype=DTYPE)
    a = a @ a.T / dim + torch.eye(dim, dtype=DTYPE)
    b = torch.randn(dim, generator=gen, dtype=DTYPE)

    def per_sample(x):
        return 0.5 * x @ a @ x + b @ x

    def batched(x):  # x: (rows, dim) -> (rows,)
        return 0.5 * ((x @ a) * x).sum(-1) + x @ b

    return per_sample, batched, a, b


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('chunk_size', [None, 3])
def test_matches_formula_and_the_vmapped_per_sample_objective(
    method, chunk_size, recorder, reference
):
    per_sample, batched, _, _ = quadratic()
    theta = torch.linspace(-1.0, 1.0, 6, dtype=DTYPE)
    grads = []
    for fn, kwargs in ((per_sample, {}), (batched, {'batched': True})):
        x = theta.clone().requires_grad_()
        torch.manual_seed(7)
        out = zero_order(
            recorder, method=method, num_samples=8, sigma=0.2, chunk_size=chunk_size, **kwargs
        )(fn)(x)
        assert out.shape == ()  # the forward value of a batch of one, as a 0-dim tensor
        torch.testing.assert_close(out, per_sample(theta), rtol=1e-12, atol=1e-12)
        (1.5 * out).backward()
        grads.append(x.grad)
    (expected,) = reference(
        lambda ts: per_sample(ts[0]),
        [theta],
        [recorder.noises([(6,)])[0][8:]],
        method,
        0.2,
        grad_output=1.5,
    )  # the second run's noise (the recorder saw both runs)
    torch.testing.assert_close(grads[1], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('method', METHODS)
def test_pytree_with_frozen_leaf_and_extra_argument(method, recorder, reference):
    """Frozen leaves arrive expanded to the batch; other arguments arrive as given."""
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(4, 3, generator=gen, dtype=DTYPE)
    frozen = torch.randn(2, generator=gen, dtype=DTYPE)  # in argnums, no requires_grad
    target = torch.randn(4, generator=gen, dtype=DTYPE)
    seen = []

    def batched(p, y):
        seen.append((p['w'].shape, p['z'].shape, y.shape))
        pred = torch.einsum('rij,j->ri', p['w'], torch.ones(3, dtype=DTYPE))
        return (pred - y).pow(2).sum(-1) + p['z'].sum(-1) * p['w'].sum((-2, -1))

    def per_sample(w, z, y):
        return (w.sum(-1) - y).pow(2).sum() + z.sum() * w.sum()

    w = weight.clone().requires_grad_()
    out = zero_order(recorder, method=method, num_samples=5, sigma=0.1, batched=True)(batched)(
        {'w': w, 'z': frozen}, target
    )
    out.backward()
    rows = 10 if method == 'antithetic' else 5
    assert seen == [((1, 4, 3), (1, 2), (4,)), ((rows, 4, 3), (rows, 2), (4,))]
    (expected,) = reference(
        lambda ts: per_sample(ts[0], frozen, target),
        [weight],
        [recorder.noises([(4, 3)])[0]],
        method,
        0.1,
    )
    torch.testing.assert_close(w.grad, expected, rtol=1e-10, atol=1e-12)


def test_antithetic_relative_rms_error_is_sqrt_d_plus_1_over_n():
    """The batched path has the estimator's accuracy: sqrt((d + 1) / N) on a quadratic."""
    dim, num = 20, 50
    _, batched, a, b = quadratic(dim)
    theta = torch.linspace(-1.0, 1.0, dim, dtype=DTYPE)
    g = a @ theta + b
    fn = zero_order(
        lambda shape: torch.randn(shape, dtype=DTYPE),
        method='antithetic',
        num_samples=num,
        sigma=0.1,
        batched=True,
    )(batched)
    torch.manual_seed(11)
    errors = []
    for _ in range(400):
        x = theta.clone().requires_grad_()
        fn(x).backward()
        errors.append(float((x.grad - g).pow(2).sum()))
    rel_rms = math.sqrt(sum(errors) / len(errors)) / float(g.norm())
    assert rel_rms == pytest.approx(math.sqrt((dim + 1) / num), rel=0.10)


def test_no_grad_evaluates_a_batch_of_one():
    per_sample, batched, _, _ = quadratic()
    x = torch.ones(6, dtype=DTYPE)
    out = zero_order(torch.distributions.Normal(0.0, 1.0), batched=True)(batched)(x)
    torch.testing.assert_close(out, per_sample(x), rtol=1e-12, atol=1e-12)


def test_errors():
    x = torch.ones(3, requires_grad=True)
    normal = torch.distributions.Normal(0.0, 1.0)
    with pytest.raises(RuntimeError, match=r'batched=True.*shape \(1,\); got \(\)'):
        zero_order(normal, batched=True)(lambda t: t.sum())(x)
    with pytest.raises(RuntimeError, match=r'batched=True.*got float'):
        zero_order(normal, batched=True)(lambda t: 1.0)(x)
    calls = []

    def wrong_in_backward(t):
        calls.append(t.shape[0])
        return t.sum(-1) if t.shape[0] == 1 else t.sum()

    out = zero_order(normal, num_samples=4, batched=True)(wrong_in_backward)(x)
    with pytest.raises(RuntimeError, match=r'shape \(4,\); got \(\)'):
        out.backward()
    with pytest.raises(TypeError, match='`batched` must be True or False'):
        zero_order(normal, batched=1)
    with pytest.raises(ValueError, match='`vectorize` must be None with `batched=True`'):
        zero_order(normal, batched=True, vectorize=False)
