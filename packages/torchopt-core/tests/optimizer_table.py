"""The one table of optimizers that the conformance, parity, engine and checkpoint tests share.

Each row: (id, torchopt class, torchopt functional alias, torch.optim class or ``None``, kwargs
shared by all three). Rows without a torch.optim counterpart are checked against torchopt's own
reference paths only.
"""

from __future__ import annotations

import torch

import torchopt

# (torchopt class, torchopt functional alias, torch.optim class, shared kwargs)
CASES = [
    ('SGD', torchopt.SGD, torchopt.sgd, torch.optim.SGD, dict(lr=1e-2)),
    ('SGD-m', torchopt.SGD, torchopt.sgd, torch.optim.SGD, dict(lr=1e-2, momentum=0.9)),
    ('SGD-md', torchopt.SGD, torchopt.sgd, torch.optim.SGD,
     dict(lr=1e-2, momentum=0.9, dampening=0.5, weight_decay=0.1)),
    ('SGD-nesterov', torchopt.SGD, torchopt.sgd, torch.optim.SGD,
     dict(lr=1e-2, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ('SGD-max', torchopt.SGD, torchopt.sgd, torch.optim.SGD,
     dict(lr=1e-2, momentum=0.9, maximize=True)),
    ('Adam', torchopt.Adam, torchopt.adam, torch.optim.Adam, dict(lr=1e-2)),
    ('Adam-wd', torchopt.Adam, torchopt.adam, torch.optim.Adam,
     dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ('Adam-max', torchopt.Adam, torchopt.adam, torch.optim.Adam, dict(lr=1e-2, maximize=True)),
    ('AdamW', torchopt.AdamW, torchopt.adamw, torch.optim.AdamW, dict(lr=1e-2)),
    ('AdamW-wd', torchopt.AdamW, torchopt.adamw, torch.optim.AdamW,
     dict(lr=1e-2, betas=(0.7, 0.9), weight_decay=0.3, maximize=True)),
    ('Adagrad', torchopt.Adagrad, torchopt.adagrad, torch.optim.Adagrad, dict(lr=1e-1)),
    ('Adagrad-all', torchopt.Adagrad, torchopt.adagrad, torch.optim.Adagrad,
     dict(lr=1e-1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-8,
          maximize=True)),
    ('Adadelta', torchopt.Adadelta, torchopt.adadelta, torch.optim.Adadelta, dict(lr=1.0)),
    ('Adadelta-all', torchopt.Adadelta, torchopt.adadelta, torch.optim.Adadelta,
     dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.1)),
    ('Adamax', torchopt.Adamax, torchopt.adamax, torch.optim.Adamax, dict(lr=2e-3, eps=1e-8)),
    ('Adamax-all', torchopt.Adamax, torchopt.adamax, torch.optim.Adamax,
     dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ('RAdam', torchopt.RAdam, torchopt.radam, torch.optim.RAdam, dict(lr=1e-2, eps=1e-8)),
    ('RAdam-all', torchopt.RAdam, torchopt.radam, torch.optim.RAdam,
     dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1)),
    ('RMSprop', torchopt.RMSprop, torchopt.rmsprop, torch.optim.RMSprop, dict(lr=1e-2)),
    ('RMSprop-all', torchopt.RMSprop, torchopt.rmsprop, torch.optim.RMSprop,
     dict(lr=1e-2, alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.5, centered=True,
          maximize=True)),
    ('RMSprop-m', torchopt.RMSprop, torchopt.rmsprop, torch.optim.RMSprop,
     dict(lr=1e-2, momentum=0.9)),
    ('NAdam', torchopt.NAdam, torchopt.nadam, torch.optim.NAdam, dict(lr=1e-2)),
    ('NAdam-all', torchopt.NAdam, torchopt.nadam, torch.optim.NAdam,
     dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, momentum_decay=1e-2,
          maximize=True)),
]


# Optimizers torch.optim does not have (same row layout, no reference class).
EXTRA = [
    ('Lion', torchopt.Lion, torchopt.lion, None, dict(lr=1e-3, weight_decay=0.1)),
    ('Lamb', torchopt.Lamb, torchopt.lamb, None, dict(lr=1e-3, weight_decay=0.1)),
]

ALL = CASES + EXTRA
IDS = [c[0] for c in CASES]
ALL_IDS = [c[0] for c in ALL]


def loss(params: list[torch.Tensor]) -> torch.Tensor:
    """A smooth, non-quadratic objective over a list of parameters (each leaf weighted)."""
    return sum(
        ((p - 0.3) ** 2 * (i + 1)).sum() + 0.05 * (p**3).sum() + 0.1 * p.sin().sum()
        for i, p in enumerate(params)
    )


_SHAPES = [(5, 3), (7,), (2, 2, 2), (4,)]


def init_params(seed: int, n: int = 3) -> list[torch.Tensor]:
    """``n`` float64 tensors of varied shapes (deterministic for a seed)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in _SHAPES[:n]]
