"""The one table of optimizers: every optimizer suite parametrizes over it.

A :class:`Row` names an optimizer configuration and what each suite needs of it: the functional
alias, the torch-like class and the Meta class (all three take ``kwargs``), the reference the
results must match — ``torch.optim`` (float64, <= 1e-12 after 20 steps) where it has the
algorithm, else a float64 rule written from the paper and optax's update rule
(``optimizer_references``, <= 1e-10) — and the per-parameter names the class writes in a
checkpoint. ``CASES`` are the rows with a ``torch.optim`` reference, ``EXTRA`` those without;
``ALL`` is both. Adding a row puts the optimizer under the parity, missing-gradient, ``vmap``,
pure-state, differentiability, conformance, shape-check, signature, Meta and checkpoint suites
(``test_optimizer_table.py`` checks that every suite runs every row).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import optimizer_references as refs
import pytest
import torch

import torchopt

ADAM = ('exp_avg', 'exp_avg_sq', 'step')
AMSGRAD = ('exp_avg', 'exp_avg_sq', 'max_exp_avg_sq', 'step')
ADAFACTOR = ('col_var', 'row_var', 'step', 'variance')  # row_var, col_var of matrices only
RPROP = ('prev', 'step', 'step_size')
ASGD = ('ax', 'eta', 'mu', 'step')


@dataclasses.dataclass(frozen=True)
class Row:
    """One optimizer configuration and what the suites need of it."""

    id: str
    fn: Callable[..., Any]  # the functional alias: fn(**kwargs)
    cls: type  # the torch-like class: cls(params, **kwargs)
    meta: type  # the Meta class: meta(module, **meta_kwargs)
    kwargs: dict
    torch_cls: Callable[..., Any] | None = None  # torch.optim's: torch_cls(params, **torch_kwargs)
    torch_extra: dict = dataclasses.field(default_factory=dict)  # added to kwargs for torch_cls
    reference: Callable[..., Any] | None = None  # else: float64 rule (p, g, state, kwargs) -> p
    checkpoint: tuple[str, ...] = ()  # state_dict names, all parameters' (() : under 'torchopt')
    matrices_only: bool = False  # Muon: every parameter a matrix

    @property
    def torch_kwargs(self) -> dict:
        return {**self.kwargs, **self.torch_extra}

    @property
    def meta_kwargs(self) -> dict:
        """``kwargs`` restricted to the Meta class's arguments (upstream's lack ``maximize``)."""
        accepted = inspect.signature(self.meta).parameters
        return {k: v for k, v in self.kwargs.items() if k in accepted}

    @property
    def tol(self) -> float:
        return TORCH_TOL if self.torch_cls is not None else REF_TOL

    def make_torch(self, params: list, **extra: Any) -> Any:
        accepted = inspect.signature(self.torch_cls).parameters
        foreach = {'foreach': False} if 'foreach' in accepted else {}
        return self.torch_cls(params, **foreach, **self.torch_kwargs, **extra)


TORCH_TOL = 1e-12
REF_TOL = 1e-10
T = torchopt


def _row(id, cls, fn, meta, torch_cls, kwargs, **more):  # noqa: A002
    return Row(id=id, fn=fn, cls=cls, meta=meta, kwargs=kwargs, torch_cls=torch_cls, **more)


CASES = [
    _row('SGD', T.SGD, T.sgd, T.MetaSGD, torch.optim.SGD, dict(lr=1e-2)),
    _row(
        'SGD-m',
        T.SGD,
        T.sgd,
        T.MetaSGD,
        torch.optim.SGD,
        dict(lr=1e-2, momentum=0.9),
        checkpoint=('momentum_buffer',),
    ),
    _row(
        'SGD-md',
        T.SGD,
        T.sgd,
        T.MetaSGD,
        torch.optim.SGD,
        dict(lr=1e-2, momentum=0.9, dampening=0.5, weight_decay=0.1),
        checkpoint=('momentum_buffer',),
    ),
    _row(
        'SGD-nesterov',
        T.SGD,
        T.sgd,
        T.MetaSGD,
        torch.optim.SGD,
        dict(lr=1e-2, momentum=0.8, nesterov=True, weight_decay=0.05),
        checkpoint=('momentum_buffer',),
    ),
    _row(
        'SGD-max',
        T.SGD,
        T.sgd,
        T.MetaSGD,
        torch.optim.SGD,
        dict(lr=1e-2, momentum=0.9, maximize=True),
        checkpoint=('momentum_buffer',),
    ),
    _row('Adam', T.Adam, T.adam, T.MetaAdam, torch.optim.Adam, dict(lr=1e-2), checkpoint=ADAM),
    _row(
        'Adam-wd',
        T.Adam,
        T.adam,
        T.MetaAdam,
        torch.optim.Adam,
        dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        checkpoint=ADAM,
    ),
    _row(
        'Adam-max',
        T.Adam,
        T.adam,
        T.MetaAdam,
        torch.optim.Adam,
        dict(lr=1e-2, maximize=True),
        checkpoint=ADAM,
    ),
    _row(
        'Adam-amsgrad',
        T.Adam,
        T.adam,
        T.MetaAdam,
        torch.optim.Adam,
        dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True),
        checkpoint=AMSGRAD,
    ),
    _row('AdamW', T.AdamW, T.adamw, T.MetaAdamW, torch.optim.AdamW, dict(lr=1e-2), checkpoint=ADAM),
    _row(
        'AdamW-wd',
        T.AdamW,
        T.adamw,
        T.MetaAdamW,
        torch.optim.AdamW,
        dict(lr=1e-2, betas=(0.7, 0.9), weight_decay=0.3, maximize=True),
        checkpoint=ADAM,
    ),
    _row(
        'AdamW-amsgrad',
        T.AdamW,
        T.adamw,
        T.MetaAdamW,
        torch.optim.AdamW,
        dict(lr=1e-2, weight_decay=0.3, amsgrad=True, maximize=True),
        checkpoint=AMSGRAD,
    ),
    _row(
        'Adagrad',
        T.Adagrad,
        T.adagrad,
        T.MetaAdagrad,
        torch.optim.Adagrad,
        dict(lr=1e-1),
        checkpoint=('step', 'sum'),
    ),
    _row(
        'Adagrad-all',
        T.Adagrad,
        T.adagrad,
        T.MetaAdagrad,
        torch.optim.Adagrad,
        dict(
            lr=1e-1,
            lr_decay=0.05,
            weight_decay=0.1,
            initial_accumulator_value=0.2,
            eps=1e-8,
            maximize=True,
        ),
        checkpoint=('step', 'sum'),
    ),
    _row(
        'Adadelta',
        T.Adadelta,
        T.adadelta,
        T.MetaAdadelta,
        torch.optim.Adadelta,
        dict(lr=1.0),
        checkpoint=('acc_delta', 'square_avg', 'step'),
    ),
    _row(
        'Adadelta-all',
        T.Adadelta,
        T.adadelta,
        T.MetaAdadelta,
        torch.optim.Adadelta,
        dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.1),
        checkpoint=('acc_delta', 'square_avg', 'step'),
    ),
    _row(
        'Adamax',
        T.Adamax,
        T.adamax,
        T.MetaAdamax,
        torch.optim.Adamax,
        dict(lr=2e-3, eps=1e-8),
        checkpoint=('exp_avg', 'exp_inf', 'step'),
    ),
    _row(
        'Adamax-all',
        T.Adamax,
        T.adamax,
        T.MetaAdamax,
        torch.optim.Adamax,
        dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        checkpoint=('exp_avg', 'exp_inf', 'step'),
    ),
    _row(
        'RAdam',
        T.RAdam,
        T.radam,
        T.MetaRAdam,
        torch.optim.RAdam,
        dict(lr=1e-2, eps=1e-8),
        checkpoint=ADAM,
    ),
    _row(
        'RAdam-all',
        T.RAdam,
        T.radam,
        T.MetaRAdam,
        torch.optim.RAdam,
        dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1),
        checkpoint=ADAM,
    ),
    _row(
        'RMSprop',
        T.RMSprop,
        T.rmsprop,
        T.MetaRMSprop,
        torch.optim.RMSprop,
        dict(lr=1e-2),
        checkpoint=('square_avg', 'step'),
    ),
    _row(
        'RMSprop-all',
        T.RMSprop,
        T.rmsprop,
        T.MetaRMSprop,
        torch.optim.RMSprop,
        dict(
            lr=1e-2,
            alpha=0.9,
            eps=1e-6,
            weight_decay=0.1,
            momentum=0.5,
            centered=True,
            maximize=True,
        ),
        checkpoint=('grad_avg', 'momentum_buffer', 'square_avg', 'step'),
    ),
    _row(
        'RMSprop-m',
        T.RMSprop,
        T.rmsprop,
        T.MetaRMSprop,
        torch.optim.RMSprop,
        dict(lr=1e-2, momentum=0.9),
        checkpoint=('momentum_buffer', 'square_avg', 'step'),
    ),
    _row(
        'NAdam',
        T.NAdam,
        T.nadam,
        T.MetaNAdam,
        torch.optim.NAdam,
        dict(lr=1e-2),
        checkpoint=(*ADAM, 'mu_product'),
    ),
    _row(
        'NAdam-all',
        T.NAdam,
        T.nadam,
        T.MetaNAdam,
        torch.optim.NAdam,
        dict(
            lr=1e-2,
            betas=(0.8, 0.99),
            eps=1e-6,
            weight_decay=0.1,
            momentum_decay=1e-2,
            maximize=True,
        ),
        checkpoint=(*ADAM, 'mu_product'),
    ),
    _row(
        'AMSGrad',
        T.AMSGrad,
        T.amsgrad,
        T.MetaAMSGrad,
        torch.optim.Adam,
        dict(lr=1e-2),
        torch_extra=dict(amsgrad=True),
        checkpoint=AMSGRAD,
    ),
    _row(
        'AMSGrad-all',
        T.AMSGrad,
        T.amsgrad,
        T.MetaAMSGrad,
        torch.optim.Adam,
        dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, maximize=True),
        torch_extra=dict(amsgrad=True),
        checkpoint=AMSGRAD,
    ),
    _row(
        'Adafactor',
        T.Adafactor,
        T.adafactor,
        T.MetaAdafactor,
        torch.optim.Adafactor,
        dict(lr=1e-2),
        checkpoint=ADAFACTOR,
    ),
    _row(
        'Adafactor-all',
        T.Adafactor,
        T.adafactor,
        T.MetaAdafactor,
        torch.optim.Adafactor,
        dict(lr=5e-2, beta2_decay=-0.5, eps=(1e-20, 1e-3), d=2.0, weight_decay=0.1, maximize=True),
        checkpoint=ADAFACTOR,
    ),
    _row(
        'Rprop',
        T.Rprop,
        T.rprop,
        T.MetaRprop,
        torch.optim.Rprop,
        dict(lr=1e-2),
        checkpoint=RPROP,
    ),
    _row(
        'Rprop-all',
        T.Rprop,
        T.rprop,
        T.MetaRprop,
        torch.optim.Rprop,
        dict(lr=5e-3, etas=(0.3, 1.5), step_sizes=(1e-4, 1e-1), maximize=True),
        checkpoint=RPROP,
    ),
    _row('ASGD', T.ASGD, T.asgd, T.MetaASGD, torch.optim.ASGD, dict(lr=1e-2), checkpoint=ASGD),
    _row(
        'ASGD-all',
        T.ASGD,
        T.asgd,
        T.MetaASGD,
        torch.optim.ASGD,
        dict(lr=2e-2, lambd=1e-2, alpha=0.5, t0=5, weight_decay=0.1),
        checkpoint=ASGD,
    ),
    _row(
        'Muon',
        T.Muon,
        T.muon,
        T.MetaMuon,
        torch.optim.Muon,
        dict(lr=1e-2),
        checkpoint=('momentum_buffer',),
        matrices_only=True,
    ),
    _row(
        'Muon-all',
        T.Muon,
        T.muon,
        T.MetaMuon,
        torch.optim.Muon,
        dict(
            lr=2e-2,
            weight_decay=0.05,
            momentum=0.9,
            nesterov=False,
            ns_steps=3,
            adjust_lr_fn='match_rms_adamw',
        ),
        checkpoint=('momentum_buffer',),
        matrices_only=True,
    ),
]

# Optimizers torch.optim does not have: a float64 reference from the update rule instead.
EXTRA = [
    _row(
        'Lion',
        T.Lion,
        T.lion,
        T.MetaLion,
        None,
        dict(lr=1e-3, weight_decay=0.1),
        reference=refs.lion,
        checkpoint=('exp_avg',),
    ),
    _row(
        'Lion-all',
        T.Lion,
        T.lion,
        T.MetaLion,
        None,
        dict(lr=1e-2, betas=(0.8, 0.95), weight_decay=0.2, maximize=True),
        reference=refs.lion,
        checkpoint=('exp_avg',),
    ),
    _row(
        'Lamb',
        T.Lamb,
        T.lamb,
        T.MetaLamb,
        None,
        dict(lr=1e-3, weight_decay=0.1),
        reference=refs.lamb,
        checkpoint=ADAM,
    ),
    _row(
        'Lamb-all',
        T.Lamb,
        T.lamb,
        T.MetaLamb,
        None,
        dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.1, eps_root=1e-10, maximize=True),
        reference=refs.lamb,
        checkpoint=ADAM,
    ),
    _row(
        'AdaBelief',
        T.AdaBelief,
        T.adabelief,
        T.MetaAdaBelief,
        None,
        dict(lr=1e-2),
        reference=refs.adabelief,
    ),
    _row(
        'AdaBelief-all',
        T.AdaBelief,
        T.adabelief,
        T.MetaAdaBelief,
        None,
        dict(
            lr=1e-2,
            betas=(0.8, 0.99),
            eps=1e-8,
            weight_decay=0.1,
            eps_root=1e-10,
            nesterov=True,
            maximize=True,
        ),
        reference=refs.adabelief,
    ),
    _row('Yogi', T.Yogi, T.yogi, T.MetaYogi, None, dict(lr=1e-2), reference=refs.yogi),
    _row(
        'Yogi-all',
        T.Yogi,
        T.yogi,
        T.MetaYogi,
        None,
        dict(
            lr=2e-2,
            betas=(0.8, 0.99),
            eps=1e-4,
            weight_decay=0.1,
            eps_root=1e-10,
            initial_accumulator_value=1e-3,
            maximize=True,
        ),
        reference=refs.yogi,
    ),
    _row(
        'NovoGrad',
        T.NovoGrad,
        T.novograd,
        T.MetaNovoGrad,
        None,
        dict(lr=1e-2),
        reference=refs.novograd,
    ),
    _row(
        'NovoGrad-all',
        T.NovoGrad,
        T.novograd,
        T.MetaNovoGrad,
        None,
        dict(lr=1e-2, betas=(0.8, 0.5), eps=1e-5, weight_decay=0.1, eps_root=1e-10, maximize=True),
        reference=refs.novograd,
    ),
    _row('Adan', T.Adan, T.adan, T.MetaAdan, None, dict(lr=1e-2), reference=refs.adan),
    _row(
        'Adan-all',
        T.Adan,
        T.adan,
        T.MetaAdan,
        None,
        dict(
            lr=1e-2, betas=(0.9, 0.8, 0.95), eps=1e-6, weight_decay=0.1, eps_root=0.0, maximize=True
        ),
        reference=refs.adan,
    ),
    _row(
        'SignSGD',
        T.SignSGD,
        T.sign_sgd,
        T.MetaSignSGD,
        None,
        dict(lr=1e-2),
        reference=refs.sign_sgd,
    ),
    _row(
        'SignSGD-max',
        T.SignSGD,
        T.sign_sgd,
        T.MetaSignSGD,
        None,
        dict(lr=1e-2, maximize=True),
        reference=refs.sign_sgd,
    ),
    _row(
        'LARS',
        T.LARS,
        T.lars,
        T.MetaLARS,
        None,
        dict(lr=1e-1),
        reference=refs.lars,
        checkpoint=('momentum_buffer',),
    ),
    _row(
        'LARS-all',
        T.LARS,
        T.lars,
        T.MetaLARS,
        None,
        dict(
            lr=1e-1,
            weight_decay=0.1,
            trust_coefficient=0.01,
            eps=1e-6,
            momentum=0.8,
            nesterov=True,
            maximize=True,
        ),
        reference=refs.lars,
        checkpoint=('momentum_buffer',),
    ),
]

ALL = CASES + EXTRA
IDS = [r.id for r in CASES]
ALL_IDS = [r.id for r in ALL]
EXTRA_IDS = [r.id for r in EXTRA]


def rows(which: list[Row] | None = None) -> Any:
    """``pytest.mark.parametrize('row', ...)`` over ``which`` (every row by default)."""
    which = ALL if which is None else which
    return pytest.mark.parametrize('row', which, ids=[r.id for r in which])


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


def shapes_for(row: Row | str) -> list | None:
    """The parameter shapes a row runs on (``None``: the default ones)."""
    matrices = row.matrices_only if isinstance(row, Row) else row.startswith('Muon')
    return MATRIX_SHAPES if matrices else None


def row_params(row: Row, seed: int, n: int = 3) -> list[torch.Tensor]:
    """``init_params`` on the shapes ``row`` runs on."""
    return init_params(seed, n, shapes_for(row))


# --- runners shared by the suites -----------------------------------------------------------------


def max_err(a: list, b: list) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def missing_schedule(n: int, steps: int = 20, seed: int = 7) -> list[set[int]]:
    """For every step, the parameter indices whose gradient is ``None`` (a random subset)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        mask = torch.rand(n, generator=g) < 0.35
        out.append({i for i in range(n) if mask[i]})
    return out


def run_reference(row: Row, params: list, missing: list[set[int]]) -> list[torch.Tensor]:
    """``params`` after ``len(missing)`` steps of the row's reference (torch.optim or the rule)."""
    if row.torch_cls is not None:
        return run_class(row, params, missing, make=row.make_torch)
    states: list[dict] = [{} for _ in params]
    values = [p.detach().clone() for p in params]
    for skip in missing:
        xs = [v.clone().requires_grad_() for v in values]
        grads = torch.autograd.grad(loss(xs), xs)
        values = [v if i in skip else row.reference(v, g, states[i], row.kwargs)
                  for i, (v, g) in enumerate(zip(values, grads))]  # fmt: skip
    return values


def run_class(row: Row, params: list, missing: list[set[int]], make: Any = None) -> list:
    """``params`` after the torch-like class's ``step()`` (gradients of ``missing`` ``None``)."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = (make or (lambda xs: row.cls(xs, **row.kwargs)))(ps)
    for skip in missing:
        opt.zero_grad(set_to_none=True)
        loss(ps).backward()
        for i in skip:
            ps[i].grad = None
        opt.step()
    return [p.detach() for p in ps]


def run_functional(row: Row, params: list, missing: list[set[int]], inplace: bool) -> list:
    """``params`` (as a dict tree) after the functional alias's ``update``/``apply_updates``."""
    tree = {f'p{i}': p.detach().clone().requires_grad_() for i, p in enumerate(params)}
    opt = row.fn(**row.kwargs)
    state = opt.init(tree)
    for skip in missing:
        grads = list(torch.autograd.grad(loss(list(tree.values())), list(tree.values())))
        for i in skip:
            grads[i] = None
        updates, state = opt.update(dict(zip(tree, grads)), state, params=tree, inplace=inplace)
        tree = torchopt.apply_updates(tree, updates, inplace=inplace)
        if not inplace:
            tree = {k: v.detach().requires_grad_() for k, v in tree.items()}
    return [v.detach() for v in tree.values()]
