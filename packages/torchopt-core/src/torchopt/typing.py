"""Type aliases used across torchopt (upstream ``torchopt.typing``)."""

from __future__ import annotations

from abc import abstractmethod
from typing import (
    Callable,
    Dict,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    runtime_checkable,
)

import torch
from optree.typing import PyTree, PyTreeTypeVar
from torch import Tensor
from torch.distributions import Distribution
from torch.futures import Future

from torchopt.base import (
    ChainedGradientTransformation,
    EmptyState,
    GradientTransformation,
    UninitializedState,
)

__all__ = [
    'GradientTransformation',
    'ChainedGradientTransformation',
    'EmptyState',
    'UninitializedState',
    'Params',
    'Updates',
    'OptState',
    'Scalar',
    'Numeric',
    'Schedule',
    'ScalarOrSchedule',
    'PyTree',
    'Tensor',
    'OptionalTensor',
    'ListOfTensors',
    'TupleOfTensors',
    'SequenceOfTensors',
    'TensorOrTensors',
    'TensorTree',
    'ListOfOptionalTensors',
    'TupleOfOptionalTensors',
    'SequenceOfOptionalTensors',
    'OptionalTensorOrOptionalTensors',
    'OptionalTensorTree',
    'TensorContainer',
    'ModuleTensorContainers',
    'Future',
    'LinearSolver',
    'Device',
    'Size',
    'Distribution',
    'SampleFunc',
    'Samplable',
]

T = TypeVar('T')

Device = Union[torch.device, str, int]
Scalar = Union[float, int, bool]
Numeric = Union[Tensor, Scalar]
Schedule = Callable[[Numeric], Numeric]
ScalarOrSchedule = Union[float, Schedule]

OptionalTensor = Optional[Tensor]
ListOfTensors = List[Tensor]
TupleOfTensors = Tuple[Tensor, ...]
SequenceOfTensors = Sequence[Tensor]
TensorOrTensors = Union[Tensor, SequenceOfTensors]
TensorTree = PyTreeTypeVar('TensorTree', Tensor)  # type: ignore[valid-type]
ListOfOptionalTensors = List[OptionalTensor]
TupleOfOptionalTensors = Tuple[OptionalTensor, ...]
SequenceOfOptionalTensors = Sequence[OptionalTensor]
OptionalTensorOrOptionalTensors = Union[OptionalTensor, SequenceOfOptionalTensors]
OptionalTensorTree = PyTreeTypeVar('OptionalTensorTree', OptionalTensor)  # type: ignore[valid-type]

TensorContainer = Dict[str, Optional[Tensor]]
ModuleTensorContainers = Tuple[TensorContainer, ...]

Params = TensorTree
Updates = Params
OptState = TensorTree

LinearSolver = Callable[[Callable[[TensorTree], TensorTree], TensorTree], TensorTree]
Size = torch.Size
SampleFunc = Callable[[Size], Union[Tensor, Sequence[Numeric]]]


@runtime_checkable
class Samplable(Protocol):  # pylint: disable=too-few-public-methods
    """Anything with ``sample(sample_shape)``, e.g. a ``torch.distributions.Distribution``."""

    @abstractmethod
    def sample(self, sample_shape: Size = Size()) -> Tensor | Sequence[Numeric]:
        """Draw samples of shape ``sample_shape + batch_shape + event_shape``."""
        raise NotImplementedError


Samplable.register(Distribution)  # type: ignore[attr-defined]
