"""Every public signature matches the TorchOpt 0.7 reference (names, order, defaults, kw-only)."""

from __future__ import annotations

import inspect

import pytest
import torch
from optimizer_table import rows

import torchopt

# Copied from the compatibility reference (shared/reference/torchopt-0.7-api.md).
EXPECTED = {
    'sgd': '(lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *, moment_requires_grad=False, maximize=False)',
    'adam': '(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, *, eps_root=0.0, moment_requires_grad=False, maximize=False, use_accelerated_op=False)',
    'adamw': '(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, *, eps_root=0.0, mask=None, moment_requires_grad=False, maximize=False, use_accelerated_op=False)',
    'adagrad': '(lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, *, maximize=False)',
    'adadelta': '(lr=0.001, rho=0.9, eps=1e-06, weight_decay=0.0, *, moment_requires_grad=False)',
    'adamax': '(lr=0.001, betas=(0.9, 0.999), eps=1e-06, weight_decay=0.0, *, moment_requires_grad=False)',
    'radam': '(lr=0.001, betas=(0.9, 0.999), eps=1e-06, weight_decay=0.0, *, moment_requires_grad=False)',
    'rmsprop': '(lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.0, centered=False, *, initial_scale=0.0, nesterov=False, maximize=False)',
    'SGD': '(params, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False, maximize=False)',
    'Adam': '(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, *, eps_root=0.0, maximize=False, use_accelerated_op=False)',
    'AdamW': '(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, *, eps_root=0.0, mask=None, maximize=False, use_accelerated_op=False)',
    'AdaGrad': '(params, lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, *, maximize=False)',
    'AdaDelta': '(params, lr=1.0, rho=0.9, eps=1e-06, weight_decay=0.0)',
    'AdaMax': '(params, lr=0.002, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0)',
    'RAdam': '(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0)',
    'RMSProp': '(params, lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.0, centered=False, *, initial_scale=0.0, nesterov=False, maximize=False)',
    'MetaSGD': '(module, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False, moment_requires_grad=True, maximize=False)',
    'MetaAdam': '(module, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, *, eps_root=0.0, moment_requires_grad=True, maximize=False, use_accelerated_op=False)',
    'MetaAdamW': '(module, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, *, eps_root=0.0, mask=None, moment_requires_grad=False, maximize=False, use_accelerated_op=False)',
    'MetaAdaGrad': '(module, lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, *, maximize=False)',
    'MetaAdaDelta': '(module, lr=1.0, rho=0.9, eps=1e-06, weight_decay=0.0, *, moment_requires_grad=True)',
    'MetaAdaMax': '(module, lr=0.002, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, *, moment_requires_grad=True)',
    'MetaRAdam': '(module, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, *, moment_requires_grad=True)',
    'MetaRMSProp': '(module, lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.0, centered=False, *, initial_scale=0.0, nesterov=False, maximize=False)',
    'Optimizer': '(params, impl)',
    'MetaOptimizer': '(module, impl)',
    'FuncOptimizer': '(impl, *, inplace=False)',
    'apply_updates': '(params, updates, *, inplace=True)',
    'chain': '(*transformations)',
    'clip_grad_norm': '(max_norm, norm_type=2.0, error_if_nonfinite=False)',
    'nan_to_num': '(nan=0.0, posinf=None, neginf=None)',
    'register_hook': '(hook)',
    'accelerated_op_available': '(devices=None)',
    'extract_state_dict': "(target, *, by='reference', device=None, with_buffers=True, detach_buffers=False, enable_visual=False, visual_prefix='')",
    'recover_state_dict': '(target, state)',
    'module_clone': "(target, *, by='reference', detach_buffers=False, device=None)",
    'stop_gradient': '(target)',
    'module_detach_': '(target)',
}

# Arguments beyond TorchOpt 0.7, each keyword-only and after upstream's: every upstream call
# binds exactly as before (torch.optim.Adam's and AdamW's ``amsgrad``).
EXTENSIONS = {name: ', amsgrad=False' for name in ('adam', 'adamw', 'Adam', 'AdamW', 'MetaAdam',
                                                    'MetaAdamW')}  # fmt: skip
EXTENSIONS['sgd'] = ', use_accelerated_op=False'  # the one-pass accel kernel (#16)
EXTENSIONS['radam'] = ', decoupled_weight_decay=False'  # torch.optim.RAdam's RAdamW switch
# torch.optim's implementation options, on the classes torch.optim also has (in its order).
_TORCH_OPTIONS = {
    'SGD': ', *, foreach=None, differentiable=False, fused=None',
    'Adam': ', foreach=None, capturable=False, differentiable=False, fused=None, '
    'decoupled_weight_decay=False',
    'AdamW': ', foreach=None, capturable=False, differentiable=False, fused=None',
    'AdaGrad': ', foreach=None, differentiable=False, fused=None',
    'AdaDelta': ', *, foreach=None, capturable=False, differentiable=False',
    'AdaMax': ', *, foreach=None, capturable=False, differentiable=False',
    'RAdam': ', *, foreach=None, capturable=False, differentiable=False, '
    'decoupled_weight_decay=False',
    'RMSProp': ', foreach=None, capturable=False, differentiable=False',
}
for _name, _extra in _TORCH_OPTIONS.items():
    EXTENSIONS[_name] = EXTENSIONS.get(_name, '') + _extra

# torch.optim options a class does not take, and why.
TORCH_OPTIONS_NOT_TAKEN = {
    ('AMSGrad', 'decoupled_weight_decay'): "torch.optim.Adam's flag; AMSGrad with decoupled "
    'decay is torchopt.AdamW(amsgrad=True)',
}

# Where a class that follows TorchOpt 0.7 differs from torch.optim's default: upstream wins.
TORCH_DEFAULT_EXCEPTIONS = {('SGD', 'lr'): 'TorchOpt 0.7 requires lr; torch.optim has 1e-3'}

TRANSFORMS = {
    'scale': '(step_size)',
    'scale_by_schedule': '(step_size_fn)',
    'scale_by_adam': '(b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, moment_requires_grad=False)',
    'scale_by_accelerated_adam': '(b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, moment_requires_grad=False)',
    'scale_by_adamax': '(b1=0.9, b2=0.999, eps=1e-06, moment_requires_grad=False)',
    'scale_by_radam': '(b1=0.9, b2=0.999, eps=1e-06, moment_requires_grad=False)',
    'scale_by_adadelta': '(rho=0.9, eps=1e-06, moment_requires_grad=False)',
    'scale_by_rms': '(alpha=0.9, eps=1e-08, initial_scale=0.0)',
    'scale_by_stddev': '(alpha=0.9, eps=1e-08, initial_scale=0.0)',
    'scale_by_rss': '(initial_accumulator_value=0.0, eps=1e-10)',
    'trace': '(momentum=0.9, dampening=0.0, nesterov=False, moment_requires_grad=False)',
    'add_decayed_weights': '(weight_decay=0.0, mask=None)',
    'masked': '(inner, mask=None)',
    'nan_to_num': '(nan=0.0, posinf=None, neginf=None)',
}

SCHEDULES = {
    'polynomial_schedule': '(init_value, end_value, power, transition_steps, transition_begin=0)',
    'linear_schedule': '(init_value, end_value, transition_steps, transition_begin=0)',
    'exponential_decay': '(init_value, decay_rate, transition_begin=0, transition_steps=1, staircase=False, end_value=None)',
}


def _sig(obj) -> str:
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def _upstream_plus_extensions(name: str) -> str:
    expected = EXPECTED[name]
    return expected[:-1] + EXTENSIONS[name] + ')' if name in EXTENSIONS else expected


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_top_level_signature(name):
    assert _sig(getattr(torchopt, name)) == _upstream_plus_extensions(name)


@pytest.mark.parametrize('name', sorted(EXTENSIONS))
def test_extensions_are_keyword_only_after_upstreams_arguments(name):
    params = list(inspect.signature(getattr(torchopt, name)).parameters.values())
    extra = params[-EXTENSIONS[name].count('=') :]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra)
    # off by default (torch.optim's foreach/fused: None, "let the library choose")
    assert all(p.default is (None if p.name in ('foreach', 'fused') else False) for p in extra)
    # upstream's keyword-only block, which the extensions extend, or one they open
    assert '*' in EXPECTED[name] or EXTENSIONS[name].startswith(', *,')


def _defaults(obj, skip=()) -> dict:
    return {k: p.default for k, p in inspect.signature(obj).parameters.items() if k not in skip}


@rows()
def test_the_rows_classes_take_the_alias_arguments_and_the_references_defaults(row):
    """Every row's alias, class and Meta class take its kwargs; generated classes mirror the
    alias exactly; shared arguments have ``torch.optim``'s defaults where torch has the class."""
    inspect.signature(row.fn).bind(**row.kwargs)
    inspect.signature(row.cls).bind([], **row.kwargs)
    inspect.signature(row.meta).bind(torch.nn.Linear(1, 1), **row.kwargs)
    assert row.meta_kwargs == row.kwargs  # the Meta test runs with every option of the row
    alias = _defaults(row.fn, ('moment_requires_grad',))
    # torch.optim's, kept aside (decoupled_weight_decay: torch.optim.Adam's switch to AdamW)
    options = ('foreach', 'fused', 'capturable', 'differentiable', 'decoupled_weight_decay')
    cls = _defaults(row.cls, ('params', *options))
    meta = _defaults(row.meta, ('module', 'moment_requires_grad'))
    if row.cls.__name__ in EXPECTED:  # TorchOpt 0.7's classes: upstream's signatures (above)
        assert set(cls) <= set(alias) and set(meta) <= set(alias)
    else:  # made from the alias (torchopt.optim._generated)
        assert cls == {k: v for k, v in alias.items() if k not in options} and meta == alias
        mrg = inspect.signature(row.meta).parameters.get('moment_requires_grad')
        has = 'moment_requires_grad' in inspect.signature(row.fn).parameters
        assert (mrg is not None and mrg.default is True) == has
    if row.torch_cls is not None:
        theirs = _defaults(row.torch_cls)
        ours = {k: v for k, v in _defaults(row.cls).items() if k in options}
        not_taken = {k for (name, k) in TORCH_OPTIONS_NOT_TAKEN if name == row.cls.__name__}
        assert not_taken.isdisjoint(ours), row.cls.__name__  # the table is up to date
        want = {k: v for k, v in theirs.items() if k in options and k not in not_taken}
        assert ours == want, row.cls.__name__
        for k, v in cls.items():
            if k in theirs and (row.cls.__name__, k) not in TORCH_DEFAULT_EXCEPTIONS:
                assert v == theirs[k], (row.cls.__name__, k)


@pytest.mark.parametrize('name', sorted(TRANSFORMS))
def test_transform_signature(name):
    assert _sig(getattr(torchopt.transform, name)) == TRANSFORMS[name]


@pytest.mark.parametrize('name', sorted(SCHEDULES))
def test_schedule_signature(name):
    assert _sig(getattr(torchopt.schedule, name)) == SCHEDULES[name]


def test_upstream_spellings_are_the_same_classes():
    for a, b in [
        ('Adadelta', 'AdaDelta'),
        ('Adagrad', 'AdaGrad'),
        ('Adamax', 'AdaMax'),
        ('RMSprop', 'RMSProp'),
        ('MetaAdadelta', 'MetaAdaDelta'),
        ('MetaAdagrad', 'MetaAdaGrad'),
        ('MetaAdamax', 'MetaAdaMax'),
        ('MetaRMSprop', 'MetaRMSProp'),
    ]:
        assert getattr(torchopt, a) is getattr(torchopt, b)


def test_top_level_names_of_the_reference():
    upstream = (
        'AdaDelta AdaGrad AdaMax Adadelta Adagrad Adam AdamW Adamax FuncOptimizer MetaAdaDelta '
        'MetaAdaGrad MetaAdaMax MetaAdadelta MetaAdagrad MetaAdam MetaAdamW MetaAdamax '
        'MetaOptimizer MetaRAdam MetaRMSProp MetaRMSprop MetaSGD Optimizer RAdam RMSProp RMSprop '
        'SGD accelerated_op accelerated_op_available adadelta adagrad adam adamax adamw alias '
        'apply_updates base chain clip clip_grad_norm combine diff distributed extract_state_dict '
        'hook linalg linear_solve module_clone module_detach_ nan_to_num nn optim pytree radam '
        'recover_state_dict register_hook rmsprop schedule sgd stop_gradient transform typing '
        'update utils version visual'
    ).split()
    missing = [n for n in upstream if n not in dir(torchopt)]
    assert not missing
    for n in upstream:
        getattr(torchopt, n)
    assert set(torchopt.__all__) >= {
        n
        for n in upstream
        if n[0].isupper()
        or n
        in (
            'accelerated_op_available',
            'adam',
            'adamax',
            'adadelta',
            'radam',
            'adamw',
            'adagrad',
            'rmsprop',
            'sgd',
            'clip_grad_norm',
            'nan_to_num',
            'register_hook',
            'chain',
            'apply_updates',
            'extract_state_dict',
            'recover_state_dict',
            'stop_gradient',
            'module_clone',
            'module_detach_',
        )
    }


def test_submodule_attributes_are_functions():
    assert callable(torchopt.transform.scale_by_adam)
    assert callable(torchopt.alias.adam)
    assert callable(torchopt.schedule.exponential_decay)
    assert torchopt.alias.utils.__all__ == ['flip_sign_and_add_weight_decay', 'scale_by_neg_lr']
    assert set(torchopt.transform.utils.__all__) == {
        'inc_count',
        'tree_map_flat',
        'tree_map_flat_',
        'update_moment',
    }
