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


def _adam_amsgrad(params, foreach=None, **kwargs):
    return torch.optim.Adam(params, amsgrad=True, foreach=foreach, **kwargs)


# Functional optimizers of issue #20, in the same row layout; the torchopt class (the second
# entry) comes later. The torch.optim rows match torch.optim; the rows without a reference class
# are checked against float64 references written from the update rules (test_parity_extended).
FUNCTIONAL_CASES = [
    ('AMSGrad', None, torchopt.amsgrad, _adam_amsgrad, dict(lr=1e-2)),
    ('AMSGrad-all', None, torchopt.amsgrad, _adam_amsgrad,
     dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, maximize=True)),
    ('Adafactor', None, torchopt.adafactor, torch.optim.Adafactor, dict(lr=1e-2)),
    ('Adafactor-all', None, torchopt.adafactor, torch.optim.Adafactor,
     dict(lr=5e-2, beta2_decay=-0.5, eps=(1e-20, 1e-3), d=2.0, weight_decay=0.1, maximize=True)),
    ('Rprop', None, torchopt.rprop, torch.optim.Rprop, dict(lr=1e-2)),
    ('Rprop-all', None, torchopt.rprop, torch.optim.Rprop,
     dict(lr=5e-3, etas=(0.3, 1.5), step_sizes=(1e-4, 1e-1), maximize=True)),
    ('ASGD', None, torchopt.asgd, torch.optim.ASGD, dict(lr=1e-2)),
    ('ASGD-all', None, torchopt.asgd, torch.optim.ASGD,
     dict(lr=2e-2, lambd=1e-2, alpha=0.5, t0=5, weight_decay=0.1)),
    ('Muon', None, torchopt.muon, torch.optim.Muon, dict(lr=1e-2)),
    ('Muon-all', None, torchopt.muon, torch.optim.Muon,
     dict(lr=2e-2, weight_decay=0.05, momentum=0.9, nesterov=False, ns_steps=3,
          adjust_lr_fn='match_rms_adamw')),
    ('AdaBelief', None, torchopt.adabelief, None, dict(lr=1e-2)),
    ('AdaBelief-all', None, torchopt.adabelief, None,
     dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1, eps_root=1e-10, nesterov=True,
          maximize=True)),
    ('Yogi', None, torchopt.yogi, None, dict(lr=1e-2)),
    ('Yogi-all', None, torchopt.yogi, None,
     dict(lr=2e-2, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, eps_root=1e-10,
          initial_accumulator_value=1e-3, maximize=True)),
    ('NovoGrad', None, torchopt.novograd, None, dict(lr=1e-2)),
    ('NovoGrad-all', None, torchopt.novograd, None,
     dict(lr=1e-2, betas=(0.8, 0.5), eps=1e-5, weight_decay=0.1, eps_root=1e-10, maximize=True)),
    ('Adan', None, torchopt.adan, None, dict(lr=1e-2)),
    ('Adan-all', None, torchopt.adan, None,
     dict(lr=1e-2, betas=(0.9, 0.8, 0.95), eps=1e-6, weight_decay=0.1, eps_root=0.0,
          maximize=True)),
    ('SignSGD', None, torchopt.sign_sgd, None, dict(lr=1e-2)),
    ('LARS', None, torchopt.lars, None, dict(lr=1e-1)),
    ('LARS-all', None, torchopt.lars, None,
     dict(lr=1e-1, weight_decay=0.1, trust_coefficient=0.01, eps=1e-6, momentum=0.8,
          nesterov=True, maximize=True)),
]
FUNCTIONAL_IDS = [c[0] for c in FUNCTIONAL_CASES]

# Muon optimizes matrices only: its rows run on these shapes instead.
MATRIX_SHAPES = [(5, 3), (3, 7), (4, 4), (6, 2)]


def loss(params: list[torch.Tensor]) -> torch.Tensor:
    """A smooth, non-quadratic objective over a list of parameters (each leaf weighted)."""
    return sum(
        ((p - 0.3) ** 2 * (i + 1)).sum() + 0.05 * (p**3).sum() + 0.1 * p.sin().sum()
        for i, p in enumerate(params)
    )


_SHAPES = [(5, 3), (7,), (2, 2, 2), (4,)]


def init_params(seed: int, n: int = 3, shapes: list | None = None) -> list[torch.Tensor]:
    """``n`` float64 tensors of varied shapes (deterministic for a seed)."""
    g = torch.Generator().manual_seed(seed)
    shapes = _SHAPES if shapes is None else shapes
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes[:n]]


def shapes_for(name: str) -> list | None:
    """The parameter shapes a row runs on (``None``: the default ones)."""
    return MATRIX_SHAPES if name.startswith('Muon') else None
