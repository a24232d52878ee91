"""torchopt: differentiable optimization for PyTorch (TorchOpt-compatible core).

Plugins (``torchopt-implicit``, ``-zero``, ``-distributed``, ``-viz``, ``-accel``) are found
through entry points and loaded on first use; ``import torchopt`` imports none of them.
"""

from typing import Any as _Any

from torchopt import plugins as _plugins

_plugins._install_finder()

from torchopt import (  # noqa: E402
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
from torchopt.accelerated_op import is_available as accelerated_op_available  # noqa: E402
from torchopt.alias import (  # noqa: E402
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
from torchopt.clip import clip_grad_norm  # noqa: E402
from torchopt.combine import chain  # noqa: E402
from torchopt.hook import register_hook  # noqa: E402
from torchopt.optim import (  # noqa: E402
    SGD,
    AdaDelta,
    Adadelta,
    AdaGrad,
    Adagrad,
    Adam,
    AdaMax,
    Adamax,
    AdamW,
    FuncOptimizer,
    Lamb,
    Lion,
    MetaAdaDelta,
    MetaAdadelta,
    MetaAdaGrad,
    MetaAdagrad,
    MetaAdam,
    MetaAdaMax,
    MetaAdamax,
    MetaAdamW,
    MetaOptimizer,
    MetaRAdam,
    MetaRMSProp,
    MetaRMSprop,
    MetaSGD,
    NAdam,
    Optimizer,
    RAdam,
    RMSProp,
    RMSprop,
    AMSGrad,
    Adafactor,
    Rprop,
    ASGD,
    Muon,
    AdaBelief,
    Yogi,
    NovoGrad,
    Adan,
    SignSGD,
    LARS,
    MetaNAdam,
    MetaLion,
    MetaLamb,
    MetaAMSGrad,
    MetaAdafactor,
    MetaRprop,
    MetaASGD,
    MetaMuon,
    MetaAdaBelief,
    MetaYogi,
    MetaNovoGrad,
    MetaAdan,
    MetaSignSGD,
    MetaLARS,
)
from torchopt.transform import nan_to_num  # noqa: E402
from torchopt.transform import (  # noqa: E402
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
    partition,
    selective_transform,
)
from torchopt.update import apply_updates  # noqa: E402
from torchopt.unroll import unroll, unroll_module  # noqa: E402
from torchopt.utils import (  # noqa: E402
    extract_state_dict,
    module_clone,
    module_detach_,
    recover_state_dict,
    stop_gradient,
)
from torchopt.version import __version__  # noqa: E402
from torchopt import _states  # noqa: E402

# Optimizer states are NamedTuples of tensors: allow every state class of the core in torch.load's
# default ``weights_only=True`` mode so that ``torch.save(opt.state_dict())`` round-trips. The
# classes are found, not listed, so a new transformation's state cannot be forgotten.
_states.register_safe_globals()

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

# Upstream paths served by plugins, resolved on first attribute access.
_PLUGIN_MODULES = ('distributed', 'visual', 'linear_solve', 'linalg')


def __getattr__(name: str) -> _Any:
    if name in _PLUGIN_MODULES:
        import importlib

        return importlib.import_module(f'torchopt.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list:
    return sorted(set(globals()) | set(_PLUGIN_MODULES))


from torchopt import _conflict  # noqa: E402

_conflict.warn_if_conflicting()  # the original `torchopt` distribution beside torchopt-core
