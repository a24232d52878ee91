"""``torch.optim``'s ``foreach`` / ``fused`` / ``capturable`` / ``differentiable`` on the classes.

Code written for ``torch.optim`` passes them (nanoGPT builds ``AdamW(groups, ..., fused=True)``,
PyTorch's optimizer-in-backward tutorial ``Adam([p], foreach=False)``): the classes that
``torch.optim`` also has take the same ones, keep them in the groups as ``torch.optim`` does,
choose the path themselves (the numbers do not change), and refuse what they cannot honour.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from optimizer_table import ALL, init_params, loss, max_err, row_params

import torchopt

pytestmark = pytest.mark.usefixtures('float64_default')

OPTIONS = ('foreach', 'fused', 'capturable', 'differentiable')
TORCH_ROWS = [r for r in ALL if r.torch_cls is not None]


def _torch_options(row) -> dict:
    opt = row.make_torch([torch.zeros(2, 2, requires_grad=True)])
    return {k: v for k, v in opt.param_groups[0].items() if k in OPTIONS}


def _steps(row, steps=4, **options):
    params = [p.clone().requires_grad_() for p in row_params(row, 0)]
    opt = row.cls(params, **row.kwargs, **options)
    for _ in range(steps):
        opt.zero_grad()
        loss(params).backward()
        opt.step()
    return [p.detach() for p in params], opt


@pytest.mark.parametrize('row', TORCH_ROWS, ids=[r.id for r in TORCH_ROWS])
def test_the_classes_take_and_keep_torch_optims_options(row):
    theirs = _torch_options(row)
    plain, opt = _steps(row)
    ours = {k: v for k, v in opt.param_groups[0].items() if k in OPTIONS}
    assert ours.keys() == theirs.keys()  # foreach=False: torch.optim's test setting, not default
    assert ours == {k: torchopt.optim._options.DEFAULTS[k] for k in theirs}
    hints = [{'foreach': True}, {'foreach': False}] if 'foreach' in theirs else []
    if 'fused' in theirs:
        hints.append({'fused': True})
    for hint in hints:  # the path is torchopt's choice: the same numbers, bit for bit
        got, opt = _steps(row, **hint)
        assert max_err(got, plain) == 0.0, hint
        assert all(g[k] == v for g in opt.param_groups for k, v in hint.items())


def test_nanogpt_style_fused_adamw_with_decay_groups_matches_torch_optim():
    def run(cls):
        params = [p.clone().requires_grad_() for p in init_params(3)]
        groups = [
            {'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
        ]
        opt = cls(groups, lr=6e-4, betas=(0.9, 0.95), fused=True)
        for _ in range(10):
            opt.zero_grad()
            loss(params).backward()
            opt.step()
        return [p.detach() for p in params], opt

    ours, opt = run(torchopt.AdamW)
    theirs, ref = run(torch.optim.AdamW)
    assert max_err(ours, theirs) <= 1e-12
    saved = opt.state_dict()
    ref.load_state_dict(saved)  # the options travel in the groups, as torch.optim's
    assert [g['fused'] for g in ref.param_groups] == [True, True]


@pytest.mark.parametrize(
    ('kwargs', 'error', 'match'),
    [
        (dict(fused=True, foreach=True), ValueError, '`fused` and `foreach` cannot be True'),
        (dict(capturable=True), ValueError, 'capturable=True .* not supported'),
        (dict(differentiable=True), ValueError, 'differentiable=True .*MetaOptimizer'),
        (dict(foreach='yes'), TypeError, "`foreach` must be a bool or None, got 'yes'"),
        (dict(differentiable=None), TypeError, '`differentiable` must be a bool, got None'),
    ],
    ids=['fused-and-foreach', 'capturable', 'differentiable', 'foreach-not-bool', 'none'],
)  # fmt: skip
def test_options_torchopt_cannot_honour_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        torchopt.Adam([torch.zeros(3, requires_grad=True)], **kwargs)


def test_fused_needs_floating_parameters_and_groups_are_checked_before_adding():
    with pytest.raises(ValueError, match=r'fused=True requires floating-point .* torch.int64'):
        torchopt.SGD([torch.zeros(3, dtype=torch.int64)], lr=0.1, fused=True)
    opt = torchopt.Adam([torch.zeros(3, requires_grad=True)])
    extra = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match='cannot be True together'):
        opt.add_param_group({'params': [extra], 'fused': True, 'foreach': True})
    assert len(opt.param_groups) == 1 and len(opt.state_groups) == 1
    opt.add_param_group({'params': [extra], 'foreach': False})
    assert opt.param_groups[1]['foreach'] is False and opt.param_groups[1]['fused'] is None


@pytest.mark.parametrize('cls', [torchopt.Lion, torchopt.Lamb, torchopt.AdaBelief])
def test_classes_torch_optim_lacks_take_no_options(cls):
    with pytest.raises(TypeError, match='foreach'):
        cls([torch.zeros(3, requires_grad=True)], foreach=True)


def test_per_parameter_optimizers_in_backward_as_pytorch_documents():
    def run(cls):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opts = {p: cls([p], foreach=False) for p in model.parameters()}

        def hook(p):
            opts[p].step()
            opts[p].zero_grad()

        for p in model.parameters():
            p.register_post_accumulate_grad_hook(hook)
        for _ in range(4):
            model(torch.randn(5, 4)).pow(2).sum().backward()
        return [p.detach() for p in model.parameters()]

    assert max_err(run(torchopt.Adam), run(torch.optim.Adam)) <= 1e-12


def _train(make, steps=6, resume=None, change=None):
    """``steps`` steps; before step 3, ``change`` to the groups or a ``resume`` (a new optimizer
    that loads the checkpoint and takes over)."""
    params = [p.clone().requires_grad_() for p in init_params(2)]
    opt = make(params)
    for k in range(steps):
        if k == 3 and resume is not None:
            resumed = resume(params)
            resumed.load_state_dict(opt.state_dict())
            opt = resumed
        if k == 3 and change:
            opt.param_groups[0].update(change)
        opt.zero_grad()
        loss(params).backward()
        opt.step()
    return [p.detach() for p in params], opt


@pytest.mark.parametrize(
    ('ours', 'theirs', 'kwargs'),
    [
        (torchopt.NAdam, torch.optim.NAdam, dict(lr=0.1, momentum_decay=4e-3)),
        (torchopt.RAdam, torch.optim.RAdam, dict(lr=0.1)),
    ],
    ids=['NAdamW', 'RAdamW'],
)
def test_nadam_and_radam_take_decoupled_weight_decay_as_torch_optim(ours, theirs, kwargs):
    kwargs = {**kwargs, 'weight_decay': 0.3, 'decoupled_weight_decay': True}
    want, _ = _train(lambda ps: theirs(ps, **kwargs))
    got, opt = _train(lambda ps: ours(ps, **kwargs))
    assert max_err(got, want) <= 1e-12
    coupled, _ = _train(lambda ps: ours(ps, **{**kwargs, 'decoupled_weight_decay': False}))
    assert max_err(coupled, want) > 1e-3  # the flag changes the numbers
    fn = torchopt.nadam if ours is torchopt.NAdam else torchopt.radam
    assert 'decoupled_weight_decay' in inspect.signature(fn).parameters  # and the alias's


@pytest.mark.parametrize('amsgrad', [False, True])
def test_adams_decoupled_weight_decay_is_adamw_as_in_torch_optim(amsgrad):
    kwargs = dict(lr=0.1, weight_decay=0.3, amsgrad=amsgrad, decoupled_weight_decay=True)
    want, _ = _train(lambda ps: torch.optim.Adam(ps, **kwargs))
    got, opt = _train(lambda ps: torchopt.Adam(ps, **kwargs))
    assert max_err(got, want) <= 1e-12
    assert opt.param_groups[0]['decoupled_weight_decay'] is True
    # switched on between steps, as torch.optim reads it from the group
    off = {**kwargs, 'decoupled_weight_decay': False}
    change = {'decoupled_weight_decay': True}
    want, _ = _train(lambda ps: torch.optim.Adam(ps, **off), change=change)
    got, _ = _train(lambda ps: torchopt.Adam(ps, **off), change=change)
    assert max_err(got, want) <= 1e-12


_TORCH_OF = {torchopt.Adam: torch.optim.Adam, torchopt.AdamW: torch.optim.AdamW}


@pytest.mark.parametrize(
    ('theirs', 'ours'),
    [
        (torch.optim.AdamW, torchopt.Adam),
        (torch.optim.Adam, torchopt.AdamW),
        (torch.optim.AdamW, torchopt.AdamW),
    ],
    ids=['AdamW->Adam', 'Adam->AdamW', 'AdamW->AdamW'],
)
def test_the_decay_kind_travels_with_the_checkpoint_as_in_torch_optim(theirs, ours):
    """``torch.optim.AdamW``'s groups hold ``decoupled_weight_decay=True``, Adam's ``False``; a
    load into Adam takes the checkpoint's, AdamW keeps ``True``. A run resumed in torchopt
    continues as one resumed in torch.optim."""

    def first(ps):
        return theirs(ps, lr=0.1, weight_decay=0.3)

    want, ref = _train(first, resume=_TORCH_OF[ours])
    got, opt = _train(first, resume=ours)
    assert max_err(got, want) <= 1e-12
    flag = opt.param_groups[0]['decoupled_weight_decay']
    assert flag is ref.param_groups[0]['decoupled_weight_decay']
    assert flag is (torch.optim.AdamW in (theirs, _TORCH_OF[ours]))


def test_adamw_groups_hold_the_flag_and_a_bad_flag_is_refused():
    p = torch.zeros(2, requires_grad=True)
    assert torchopt.AdamW([p]).param_groups[0]['decoupled_weight_decay'] is True
    assert torchopt.Adam([p]).param_groups[0]['decoupled_weight_decay'] is False
    with pytest.raises(TypeError, match='decoupled_weight_decay must be a bool'):
        torchopt.Adam([p], decoupled_weight_decay='yes')
    masked = torchopt.AdamW([p], mask=lambda ps: [True for _ in ps])
    masked.param_groups[0]['decoupled_weight_decay'] = False
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match='needs decoupled_weight_decay=True'):
        masked.step()
