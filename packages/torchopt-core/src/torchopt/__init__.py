"""torchopt: differentiable optimization for PyTorch (TorchOpt-compatible core).

Plugins (``torchopt-implicit``, ``-zero``, ``-distributed``, ``-viz``, ``-accel``) are found
through entry points and loaded on first use; ``import torchopt`` imports none of them.

The public names below are imported on first access (PEP 562 module ``__getattr__``), so that
``import torchopt`` costs little beyond ``import torch``: ``torchopt.adam`` imports the alias
module (and the transformations it builds on) the first time it is read. ``dir(torchopt)``,
``__all__`` and ``from torchopt import *`` list (and import) every public name as before.
"""

import sys as _sys
import types as _types
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from torchopt import plugins as _plugins

_plugins._install_finder()

from torchopt import _states  # noqa: E402
from torchopt.version import __version__  # noqa: E402

# Optimizer states are NamedTuples of tensors: allow every state class of the core in torch.load's
# default ``weights_only=True`` mode so that ``torch.save(opt.state_dict())`` round-trips. The
# classes are registered by name; their modules are imported when torch.load first needs them.
_states.register_safe_globals()

if _TYPE_CHECKING:  # what type checkers see; at run time these are imported on first access
    from torchopt import (
        accelerated_op,
        alias,
        base,
        clip,
        combine,
        diff,
        hook,
        nn,
        optim,
        pytree,
        schedule,
        transform,
        typing,
        update,
        utils,
        version,
    )
    from torchopt.accelerated_op import is_available as accelerated_op_available
    from torchopt.alias import (
        adabelief,
        adadelta,
        adafactor,
        adagrad,
        adam,
        adamax,
        adamw,
        adan,
        amsgrad,
        asgd,
        lamb,
        lars,
        lion,
        muon,
        nadam,
        novograd,
        radam,
        rmsprop,
        rprop,
        sgd,
        sign_sgd,
        yogi,
    )
    from torchopt.clip import clip_grad_norm
    from torchopt.combine import chain
    from torchopt.hook import register_hook
    from torchopt.optim import (
        ASGD,
        LARS,
        SGD,
        AdaBelief,
        AdaDelta,
        Adadelta,
        Adafactor,
        AdaGrad,
        Adagrad,
        Adam,
        AdaMax,
        Adamax,
        AdamW,
        Adan,
        AMSGrad,
        FuncOptimizer,
        Lamb,
        Lion,
        MetaAdaBelief,
        MetaAdaDelta,
        MetaAdadelta,
        MetaAdafactor,
        MetaAdaGrad,
        MetaAdagrad,
        MetaAdam,
        MetaAdaMax,
        MetaAdamax,
        MetaAdamW,
        MetaAdan,
        MetaAMSGrad,
        MetaASGD,
        MetaLamb,
        MetaLARS,
        MetaLion,
        MetaMuon,
        MetaNAdam,
        MetaNovoGrad,
        MetaOptimizer,
        MetaRAdam,
        MetaRMSProp,
        MetaRMSprop,
        MetaRprop,
        MetaSGD,
        MetaSignSGD,
        MetaYogi,
        Muon,
        NAdam,
        NovoGrad,
        Optimizer,
        RAdam,
        RMSProp,
        RMSprop,
        Rprop,
        SignSGD,
        Yogi,
    )
    from torchopt.transform import (
        InjectHyperparamsState,
        LookaheadParams,
        MultiSteps,
        apply_if_finite,
        clip_by_block_rms,
        clip_by_global_norm,
        freeze,
        inject_hyperparams,
        lookahead,
        multi_transform,
        nan_to_num,
        partition,
        selective_transform,
    )
    from torchopt.unroll import unroll, unroll_module
    from torchopt.update import apply_updates
    from torchopt.utils import (
        extract_state_dict,
        module_clone,
        module_detach_,
        recover_state_dict,
        stop_gradient,
    )

__all__ = [
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
    'Optimizer',
    'SGD',
    'Adam',
    'AdaMax',
    'Adamax',
    'AdaDelta',
    'Adadelta',
    'RAdam',
    'AdamW',
    'AdaGrad',
    'Adagrad',
    'RMSProp',
    'RMSprop',
    'MetaOptimizer',
    'MetaSGD',
    'MetaAdam',
    'MetaAdaMax',
    'MetaAdamax',
    'MetaAdaDelta',
    'MetaAdadelta',
    'MetaRAdam',
    'MetaAdamW',
    'MetaAdaGrad',
    'MetaAdagrad',
    'MetaRMSProp',
    'MetaRMSprop',
    'FuncOptimizer',
    'apply_updates',
    'extract_state_dict',
    'recover_state_dict',
    'stop_gradient',
    'module_clone',
    'module_detach_',
    # beyond upstream
    'nadam',
    'lion',
    'lamb',
    'NAdam',
    'Lion',
    'Lamb',
    # issue #20 (optax's breadth)
    'amsgrad',
    'adafactor',
    'rprop',
    'asgd',
    'muon',
    'adabelief',
    'yogi',
    'novograd',
    'adan',
    'sign_sgd',
    'lars',
    'inject_hyperparams',
    'InjectHyperparamsState',
    'MultiSteps',
    'apply_if_finite',
    'lookahead',
    'LookaheadParams',
    'partition',
    'multi_transform',
    'freeze',
    'selective_transform',
    'clip_by_global_norm',
    'clip_by_block_rms',
    'unroll',
    'unroll_module',
    'AMSGrad',
    'Adafactor',
    'Rprop',
    'ASGD',
    'Muon',
    'AdaBelief',
    'Yogi',
    'NovoGrad',
    'Adan',
    'SignSGD',
    'LARS',
    'MetaNAdam',
    'MetaLion',
    'MetaLamb',
    'MetaAMSGrad',
    'MetaAdafactor',
    'MetaRprop',
    'MetaASGD',
    'MetaMuon',
    'MetaAdaBelief',
    'MetaYogi',
    'MetaNovoGrad',
    'MetaAdan',
    'MetaSignSGD',
    'MetaLARS',
]

# Public name -> the module that defines it, imported on first access (the names of the
# TYPE_CHECKING imports above; a test checks that both lists agree).
_LAZY_NAMES = {
    name: (module, name)
    for module, names in {
        'torchopt.alias': (
            'adabelief adadelta adafactor adagrad adam adamax adamw adan amsgrad asgd lamb '
            'lars lion muon nadam novograd radam rmsprop rprop sgd sign_sgd yogi'
        ),
        'torchopt.clip': 'clip_grad_norm',
        'torchopt.combine': 'chain',
        'torchopt.hook': 'register_hook',
        'torchopt.optim': (
            'Optimizer FuncOptimizer SGD AdaDelta Adadelta AdaGrad Adagrad Adam AdaMax Adamax '
            'AdamW Lamb Lion NAdam RAdam RMSProp RMSprop AMSGrad Adafactor Rprop ASGD Muon '
            'AdaBelief Yogi NovoGrad Adan SignSGD LARS MetaOptimizer MetaSGD MetaAdaDelta '
            'MetaAdadelta MetaAdaGrad MetaAdagrad MetaAdam MetaAdaMax MetaAdamax MetaAdamW '
            'MetaRAdam MetaRMSProp MetaRMSprop MetaNAdam MetaLion MetaLamb MetaAMSGrad '
            'MetaAdafactor MetaRprop MetaASGD MetaMuon MetaAdaBelief MetaYogi MetaNovoGrad '
            'MetaAdan MetaSignSGD MetaLARS'
        ),
        'torchopt.transform': (
            'nan_to_num InjectHyperparamsState LookaheadParams MultiSteps apply_if_finite '
            'clip_by_block_rms clip_by_global_norm freeze inject_hyperparams lookahead '
            'multi_transform partition selective_transform'
        ),
        'torchopt.update': 'apply_updates',
        'torchopt.unroll': 'unroll unroll_module',
        'torchopt.utils': (
            'extract_state_dict module_clone module_detach_ recover_state_dict stop_gradient'
        ),
    }.items()
    for name in names.split()
}
_LAZY_NAMES['accelerated_op_available'] = ('torchopt.accelerated_op', 'is_available')

# Submodules served by ``torchopt.<name>``, imported on first access.
_SUBMODULES = (
    'accelerated_op alias base clip combine diff hook nn optim pytree schedule transform typing '
    'update utils version'
).split()
# Upstream paths served by plugins, resolved on first attribute access.
_PLUGIN_MODULES = ('distributed', 'visual', 'linear_solve', 'linalg')


def __getattr__(name: str) -> _Any:
    import importlib

    if name in _LAZY_NAMES:
        module, attr = _LAZY_NAMES[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later reads skip this function
        return value
    if name in _SUBMODULES or name in _PLUGIN_MODULES:
        return importlib.import_module(f'torchopt.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_SUBMODULES) | set(_PLUGIN_MODULES))


class _Package(_types.ModuleType):
    """``torchopt``'s module type: ``torchopt.unroll`` stays the function, not its module.

    Importing the submodule ``torchopt.unroll`` (``import torchopt.unroll``, Sphinx) makes the
    import system set the package attribute ``unroll`` to the module; the public name is the
    function, as when the package imported everything eagerly.
    """

    def __setattr__(self, name: str, value: _Any) -> None:
        if isinstance(value, _types.ModuleType) and name in _LAZY_NAMES:
            module, attr = _LAZY_NAMES[name]
            if value.__name__ == module:
                value = getattr(value, attr, value)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

from torchopt import _conflict  # noqa: E402

_conflict.warn_if_conflicting()  # the original `torchopt` distribution beside torchopt-core
