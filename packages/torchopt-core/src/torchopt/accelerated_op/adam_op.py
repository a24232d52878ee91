"""The fused Adam operator :class:`AdamOp`, at upstream's path ``torchopt.accelerated_op.adam_op``.

``from torchopt.accelerated_op.adam_op import AdamOp`` works as in TorchOpt 0.7. It runs core's
accelerated Adam transformation (:func:`torchopt.transform.scale_by_accelerated_adam`), which
dispatches to the ``torchopt-accel`` kernels when they are installed. Importing this module
loads no plugin.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ['AdamOp']


class AdamOp:
    """Upstream's fused Adam operator: ``AdamOp(b1, b2, eps, eps_root=0, inplace=True)``.

    ``__call__(mu, nu, updates, count)`` returns ``(new_mu, new_nu, new_updates)``; ``updates``
    may be ``None``. Tensors or lists of tensors are accepted.
    """

    def __init__(
        self,
        b1: float = 0.9,
        b2: float = 0.999,
        eps: float = 1e-8,
        *,
        eps_root: float = 0.0,
        inplace: bool = True,
    ) -> None:
        self.b1, self.b2, self.eps, self.eps_root, self.inplace = b1, b2, eps, eps_root, inplace

    def __call__(self, mu: Any, nu: Any, updates: Any, count: Any) -> tuple[Any, Any, Any]:
        """One Adam step: the new ``(mu, nu, updates)``."""
        from torchopt.transform._adam import ScaleByAdamState, scale_by_accelerated_adam

        if updates is None:
            return mu, nu, None
        single = isinstance(updates, torch.Tensor)
        us, ms, ns = ([updates], [mu], [nu]) if single else (list(updates), list(mu), list(nu))
        count = int(count)
        impl = scale_by_accelerated_adam(self.b1, self.b2, self.eps, self.eps_root)
        counts = [torch.full((), float(count - 1)) for _ in us]  # one step count per leaf
        new_u, state = impl.flat_update(
            us, ScaleByAdamState(ms, ns, counts), inplace=self.inplace, treespec=None
        )
        if single:
            return state.mu[0], state.nu[0], new_u[0]
        return state.mu, state.nu, new_u
