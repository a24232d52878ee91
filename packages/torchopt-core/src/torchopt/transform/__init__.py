"""Gradient transformations (upstream ``torchopt.transform``).

Each ``torchopt.transform.<name>`` is the function itself, as upstream.
"""

from torchopt.transform import utils
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
from torchopt.transform._masking import MaskedNode, MaskedState, add_decayed_weights, masked
from torchopt.transform._misc import (
    ScaleByLionState,
    nan_to_num,
    scale_by_lion,
    scale_by_trust_ratio,
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
from torchopt.transform._trace import DampenedTraceState, TraceState, trace

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
]
