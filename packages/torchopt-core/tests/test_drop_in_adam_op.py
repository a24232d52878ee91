"""``torchopt.accelerated_op.adam_op`` is importable as upstream (issue #18, item 4).

Each test's docstring states the upstream (TorchOpt 0.7.3) behaviour it checks.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

# Without the torchopt-accel plugin, AdamOp runs core's Adam after a one-time warning.
pytestmark = pytest.mark.filterwarnings('ignore:use_accelerated_op=True:UserWarning')

F64 = torch.float64


def test_module_path_and_names() -> None:
    """Upstream: ``from torchopt.accelerated_op.adam_op import AdamOp`` works.

    ``torchopt.accelerated_op.AdamOp`` is the same class.
    """
    import torchopt
    from torchopt.accelerated_op import adam_op
    from torchopt.accelerated_op.adam_op import AdamOp

    assert adam_op.AdamOp is AdamOp is torchopt.accelerated_op.AdamOp
    assert adam_op.__all__ == ['AdamOp']
    assert 'AdamOp' in torchopt.accelerated_op.__all__
    assert AdamOp.__module__ == 'torchopt.accelerated_op.adam_op'


def test_importing_adam_op_loads_no_plugin() -> None:
    """Importing the module path is cheap: no plugin (``torchopt_accel``) is loaded."""
    code = (
        'import sys\n'
        'from torchopt.accelerated_op.adam_op import AdamOp\n'
        "loaded = sorted(m for m in sys.modules if m.startswith('torchopt_'))\n"
        'assert not loaded, loaded\n'
    )
    subprocess.run([sys.executable, '-W', 'error', '-c', code], check=True, timeout=120)


def _reference(mu, nu, g, count, b1, b2, eps, eps_root):
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g * g
    mu_hat = mu / (1 - b1**count)
    nu_hat = nu / (1 - b2**count)
    return mu, nu, mu_hat / ((nu_hat + eps_root).sqrt() + eps)


@pytest.mark.parametrize('inplace', [True, False])
@pytest.mark.parametrize('count', [1, 3])
def test_adam_op_call(inplace: bool, count: int) -> None:
    """Upstream: ``AdamOp(b1, b2, eps, *, eps_root, inplace)(mu, nu, updates, count)``.

    Returns ``(new_mu, new_nu, new_updates)`` with Adam's bias-corrected step at ``count``;
    ``updates=None`` returns ``(mu, nu, None)``.
    """
    from torchopt.accelerated_op.adam_op import AdamOp

    gen = torch.Generator().manual_seed(count)
    mu, nu = torch.randn(5, generator=gen, dtype=F64), torch.rand(5, generator=gen, dtype=F64)
    g = torch.randn(5, generator=gen, dtype=F64)
    expected = _reference(mu, nu, g, count, 0.8, 0.9, 1e-6, 1e-3)
    op = AdamOp(0.8, 0.9, 1e-6, eps_root=1e-3, inplace=inplace)
    out = op(mu.clone(), nu.clone(), g.clone(), count)
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert op(mu, nu, None, count) == (mu, nu, None)
