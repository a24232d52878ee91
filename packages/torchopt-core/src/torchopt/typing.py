"""Type aliases used across torchopt (upstream ``torchopt.typing``)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Optional,
    Protocol,
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

#: Whether this torch has RPC: what ``torch.distributed.rpc.is_available()`` checks, read without
#: importing that package, which core does not import (DESIGN.md: ``import torchopt`` is light).
_HAS_RPC = hasattr(torch._C, '_rpc_init')
if _HAS_RPC:  # as upstream: the name exists only where torch has RPC
    __all__ += ['RRef']

if TYPE_CHECKING:
    from torch.distributed.rpc import RRef
else:

    def __getattr__(name: str) -> Any:
        """``RRef``, imported from ``torch.distributed.rpc`` on first use."""
        if name == 'RRef' and _HAS_RPC:
            from torch.distributed.rpc import RRef  # noqa: PLC0415

            globals()['RRef'] = RRef
            return RRef
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


T = TypeVar('T')

#: A device: a ``torch.device``, a name such as ``'cuda:0'`` or a CUDA device index.
Device = Union[torch.device, str, int]
#: A Python number.
Scalar = Union[float, int, bool]
#: A tensor or a Python number.
Numeric = Union[Tensor, Scalar]
#: A schedule: maps the step count to a value (e.g. a learning rate).
Schedule = Callable[[Numeric], Numeric]
#: A constant or a :data:`Schedule`.
ScalarOrSchedule = Union[float, Schedule]

#: A tensor or ``None``.
OptionalTensor = Optional[Tensor]
#: A list of tensors.
ListOfTensors = list[Tensor]
#: A tuple of tensors.
TupleOfTensors = tuple[Tensor, ...]
#: A sequence of tensors.
SequenceOfTensors = Sequence[Tensor]
#: A tensor or a sequence of tensors.
TensorOrTensors = Union[Tensor, SequenceOfTensors]
if TYPE_CHECKING:
    # What type checkers see: a recursive alias they accept as a type, in which a user's
    # ``dict[str, Tensor]``, ``list[Tensor]`` or NamedTuple of tensors is a tree (the read-only
    # ``Sequence``/``Mapping`` are covariant). optree's ``PyTree[Tensor]`` is a class to a type
    # checker, so no ``dict`` would match it; at run time the alias is optree's, as upstream.
    #: A pytree whose leaves are tensors.
    TensorTree = Union[Tensor, Sequence['TensorTree'], Mapping[Any, 'TensorTree']]
    #: A pytree whose leaves are tensors or ``None``.
    OptionalTensorTree = Union[
        Tensor, None, Sequence['OptionalTensorTree'], Mapping[Any, 'OptionalTensorTree']
    ]
else:
    TensorTree = PyTreeTypeVar('TensorTree', Tensor)
    OptionalTensorTree = PyTreeTypeVar('OptionalTensorTree', OptionalTensor)
#: A list of tensors or ``None``.
ListOfOptionalTensors = list[OptionalTensor]
#: A tuple of tensors or ``None``.
TupleOfOptionalTensors = tuple[OptionalTensor, ...]
#: A sequence of tensors or ``None``.
SequenceOfOptionalTensors = Sequence[OptionalTensor]
#: A tensor, ``None`` or a sequence of those.
OptionalTensorOrOptionalTensors = Union[OptionalTensor, SequenceOfOptionalTensors]

#: A ``{name: tensor or None}`` dict, such as a module's ``_parameters``.
TensorContainer = dict[str, Optional[Tensor]]
#: One :data:`TensorContainer` per (sub)module.
ModuleTensorContainers = tuple[TensorContainer, ...]

#: The parameters: a pytree of tensors.
Params = TensorTree
#: Gradients or updates, structured like the parameters.
Updates = Params
#: An optimizer state: a pytree of tensors (and numbers).
OptState = TensorTree

#: A linear solver ``solve(matvec, b) -> x``.
LinearSolver = Callable[[Callable[[TensorTree], TensorTree], TensorTree], TensorTree]
Size = torch.Size
#: A sampling function ``sample_fn(sample_shape) -> samples``.
SampleFunc = Callable[[Size], Union[Tensor, Sequence[Numeric]]]


@runtime_checkable
class Samplable(Protocol):  # pylint: disable=too-few-public-methods
    """Anything with ``sample(sample_shape)``, e.g. a ``torch.distributions.Distribution``."""

    @abstractmethod
    def sample(self, sample_shape: Size = torch.Size()) -> Tensor | Sequence[Numeric]:
        """Draw samples of shape ``sample_shape + batch_shape + event_shape``."""
        raise NotImplementedError


Samplable.register(Distribution)
