"""Gradient transformations (upstream ``torchopt.transform``).

Each ``torchopt.transform.<name>`` is the function itself, as upstream.
"""

from torchopt import _upstream_modules
from torchopt.transform import utils
from torchopt.transform._accumulation import (
    EmaState,
    MultiSteps,
    MultiStepsState,
    ParamsEMA,
    ParamsEMAState,
    ema,
    incremental_update,
    params_ema,
    skip_large_updates,
    skip_not_finite,
)
from torchopt.transform._adam import (
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByNAdamState,
    ScaleByRAdamState,
    scale_by_accelerated_adam,
    scale_by_adam,
    scale_by_adamax,
    scale_by_nadam,
    scale_by_radam,
)
from torchopt.transform._adaptive import (
    ScaleByAdanState,
    ScaleByAmsgradState,
    ScaleByBeliefState,
    ScaleByNovogradState,
    ScaleByYogiState,
    scale_by_adan,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_lars_trust_ratio,
    scale_by_novograd,
    scale_by_yogi,
)
from torchopt.transform._clipping import clip, clip_by_block_rms, clip_by_global_norm
from torchopt.transform._combining import (
    MultiTransformState,
    PartitionState,
    freeze,
    multi_transform,
    partition,
    selective_transform,
)
from torchopt.transform._elementwise import (
    AddNoiseState,
    ZeroNansState,
    add_noise,
    centralize,
    scale_by_learning_rate,
    scale_by_sign,
    set_to_zero,
    zero_nans,
)
from torchopt.transform._flat import with_flat_variant
from torchopt.transform._hyperparams import InjectHyperparamsState, inject_hyperparams
from torchopt.transform._masking import MaskedNode, MaskedState, add_decayed_weights, masked
from torchopt.transform._misc import (
    ScaleByLionState,
    nan_to_num,
    scale_by_lion,
    scale_by_trust_ratio,
)
from torchopt.transform._muon import (
    ScaleByMuonState,
    orthogonalize_via_newton_schulz,
    scale_by_muon,
    scale_by_shape,
)
from torchopt.transform._rms import (
    ScaleByAdadeltaState,
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByRStdDevState,
    scale_by_adadelta,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from torchopt.transform._scale import ScaleByScheduleState, scale, scale_by_schedule
from torchopt.transform._torch_family import (
    ScaleByAdafactorState,
    ScaleByASGDState,
    ScaleByRpropState,
    scale_by_adafactor,
    scale_by_asgd,
    scale_by_rprop,
)
from torchopt.transform._trace import DampenedTraceState, TraceState, trace
from torchopt.transform._wrappers import (
    ApplyIfFiniteState,
    LookaheadParams,
    LookaheadState,
    apply_if_finite,
    lookahead,
)

__all__ = [
    'add_decayed_weights',
    'masked',
    'nan_to_num',
    'scale',
    'scale_by_accelerated_adam',
    'scale_by_adadelta',
    'scale_by_adam',
    'scale_by_adamax',
    'scale_by_radam',
    'scale_by_rms',
    'scale_by_rss',
    'scale_by_schedule',
    'scale_by_stddev',
    'trace',
    # beyond upstream
    'scale_by_nadam',
    'scale_by_lion',
    'scale_by_trust_ratio',
    # optax's breadth (issue #20)
    'inject_hyperparams',
    'InjectHyperparamsState',
    'clip',
    'clip_by_block_rms',
    'clip_by_global_norm',
    'scale_by_learning_rate',
    'scale_by_sign',
    'set_to_zero',
    'centralize',
    'zero_nans',
    'ZeroNansState',
    'add_noise',
    'AddNoiseState',
    'partition',
    'multi_transform',
    'PartitionState',
    'MultiTransformState',
    'freeze',
    'selective_transform',
    'ema',
    'EmaState',
    'MultiSteps',
    'MultiStepsState',
    'skip_not_finite',
    'skip_large_updates',
    'incremental_update',
    'params_ema',
    'ParamsEMA',
    'ParamsEMAState',
    'apply_if_finite',
    'ApplyIfFiniteState',
    'lookahead',
    'LookaheadParams',
    'LookaheadState',
    'scale_by_amsgrad',
    'ScaleByAmsgradState',
    'scale_by_belief',
    'ScaleByBeliefState',
    'scale_by_yogi',
    'ScaleByYogiState',
    'scale_by_novograd',
    'ScaleByNovogradState',
    'scale_by_adan',
    'ScaleByAdanState',
    'scale_by_lars_trust_ratio',
    'scale_by_rprop',
    'ScaleByRpropState',
    'scale_by_asgd',
    'ScaleByASGDState',
    'scale_by_adafactor',
    'ScaleByAdafactorState',
    'scale_by_muon',
    'ScaleByMuonState',
    'scale_by_shape',
    'orthogonalize_via_newton_schulz',
]

for _factory in (  # TorchOpt 0.7's ``f.flat(...)`` and ``f.impl(..., already_flattened=...)``
    add_decayed_weights, masked, scale, scale_by_accelerated_adam, scale_by_adadelta,
    scale_by_adam, scale_by_adamax, scale_by_radam, scale_by_rms, scale_by_rss,
    scale_by_schedule, scale_by_stddev, trace,
):  # fmt: skip
    with_flat_variant(_factory)
del _factory

_upstream_modules.register(__name__)  # TorchOpt 0.7's per-object module paths
