"""TorchOpt 0.7 code using ``torchopt.nn.MetaGradientModule`` directly runs unchanged (issue #18).

Each test's docstring states the upstream (TorchOpt 0.7.3) behaviour it checks.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from torchopt.nn import MetaGradientModule


def _tensor(requires_grad: bool) -> torch.Tensor:
    return torch.tensor(1.0, requires_grad=requires_grad)


def test_base_class_takes_constructor_arguments() -> None:
    """Upstream: ``MetaGradientModule(*args, **kwargs)`` accepts any arguments.

    The tensors that require grad among them are meta-inputs: assigned as attributes they become
    meta-parameters; other tensors that require grad become parameters, tensors that do not
    require grad plain attributes.
    """
    x, y, z = _tensor(True), _tensor(True), _tensor(False)
    m = MetaGradientModule(x)
    m.x = x
    m.y = y
    m.z = z
    assert m._meta_parameters['x'] is x and m.x is x
    assert m._parameters['y'] is y
    assert m.z is z and all('z' not in d for d in (m._meta_parameters, m._parameters, m._buffers))
    assert list(m.meta_parameters()) == [x] and list(m.parameters()) == [y]

    # keyword arguments and nested containers (pytrees) are searched as well
    net = nn.Linear(2, 2)
    m = MetaGradientModule(k=[{'t': x}], net=(net,))
    assert m._meta_inputs.meta_parameters == {x, net.weight, net.bias}
    assert m._meta_inputs.meta_modules == {net}


def test_subclass_init_may_forward_its_arguments() -> None:
    """Upstream: ``super().__init__(*args, **kwargs)`` in a subclass is accepted and ignored."""

    class Inner(MetaGradientModule):
        def __init__(self, meta_net: nn.Module, scale: torch.Tensor) -> None:
            super().__init__(meta_net, scale=scale)
            self.meta_net = meta_net
            self.scale = scale

    net, scale = nn.Linear(1, 1), _tensor(True)
    inner = Inner(net, scale)
    assert inner._meta_modules['meta_net'] is net and inner._meta_parameters['scale'] is scale


def test_training_module_is_a_meta_module() -> None:
    """Upstream: a constructor module in training mode is a meta-module.

    Its parameters are meta-parameters and its submodules meta-modules; a module that is not a
    constructor input is a child module.
    """
    meta_net = nn.Sequential(nn.Linear(2, 2), nn.Dropout().eval())
    fc = nn.Linear(1, 1)
    m = MetaGradientModule(meta_net)
    m.fc = fc
    m.meta = meta_net
    m.drop = meta_net[1]  # a submodule of a training meta-module, even in eval mode
    assert m._modules == {'fc': fc}
    assert m._meta_modules == {'meta': meta_net, 'drop': meta_net[1]}
    assert list(m.parameters()) == list(fc.parameters())
    assert list(m.meta_parameters()) == list(meta_net.parameters())
    m2 = MetaGradientModule(meta_net)
    m2.add_meta_module('fc', fc)  # any module can be registered explicitly
    assert list(m2.meta_parameters()) == list(fc.parameters())


def test_eval_mode_module_is_an_ordinary_child() -> None:
    """Upstream: a constructor module in ``.eval()`` mode is not a meta-input (issue #144).

    Assigned as an attribute it becomes a child module whose parameters are the module's
    parameters; the module has no meta-parameters, and a MetaOptimizer over it updates them.
    """
    net = nn.Linear(2, 1).eval()
    m = MetaGradientModule(net)
    assert m._meta_inputs.meta_modules == set() and m._meta_inputs.meta_parameters == set()
    m.net = net
    assert m._modules == {'net': net} and m._meta_modules == {}
    assert list(m.parameters()) == list(net.parameters())
    assert list(m.meta_parameters()) == []
    m.add_module('again', net)  # no "is a meta-module" ValueError
    assert net.training is False  # the flag is left as it was


def test_bad_registrations_raise_upstream_errors() -> None:
    """Upstream: the TypeError/KeyError/ValueError messages of bad registrations."""
    x, _, b = _tensor(True), _tensor(True), _tensor(False)
    m = MetaGradientModule(x, b)
    for register in (m.register_meta_parameter, m.register_parameter):
        kind = 'meta-parameter' if register == m.register_meta_parameter else 'parameter'
        with pytest.raises(
            TypeError, match=re.escape(f'{kind} name should be a string. Got bytes')
        ):
            register(b'x', x)  # type: ignore[arg-type]
        with pytest.raises(KeyError, match=re.escape(f"{kind} name can't contain '.'")):
            register('x.x', x)
        with pytest.raises(KeyError, match=re.escape(f"{kind} name can't be empty string ''")):
            register('', x)
    m.register_buffer('z', None)
    with pytest.raises(KeyError, match=re.escape("attribute 'z' already exists")):
        m.register_meta_parameter('z', x)
    msg = (
        "cannot assign Tensor that is a meta-parameter to parameter 'x'. "
        'Use self.register_meta_parameter() instead.'
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        m.register_parameter('x', x)
    m.x = x
    with pytest.raises(KeyError, match=re.escape("attribute 'x' already exists")):
        m.register_parameter('x', x)
    # a meta-parameter must be a tensor that requires grad
    with pytest.raises(ValueError, match=re.escape("`requires_grad=False` to meta-parameter 'w'")):
        m.register_meta_parameter('w', b)
    with pytest.raises(TypeError, match=re.escape("cannot assign 'int' object to meta-parameter")):
        m.register_meta_parameter('w', 1)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match=re.escape("module name can't contain '.', got: 'a.b'")):
        m.add_module('a.b', None)
    with pytest.raises(KeyError, match=re.escape("meta-module name can't contain '.', got: 'a.b'")):
        m.add_meta_module('a.b', None)
    with pytest.raises(TypeError, match='int is not a Module subclass'):
        m.add_meta_module('n', 1)  # type: ignore[arg-type]


def test_assignments_before_super_init() -> None:
    """Upstream: assigning before ``Module.__init__()`` raises AttributeError naming it.

    A tensor that does not require grad is a plain attribute, so it may be assigned early.
    """
    t = _tensor(True)

    class Early(MetaGradientModule):
        def __init__(self, what: str, value: object = None) -> None:
            if what == 'attr':
                self.x = value
            elif what == 'param':
                self.register_parameter('x', t)
            elif what == 'buffer':
                self.register_buffer('x', torch.tensor(1.0))

    cases = [
        (('attr', t), 'cannot assign parameters before Module.__init__() call'),
        (('attr', nn.Linear(1, 1)), 'cannot assign module before Module.__init__() call'),
        (('param',), 'cannot assign parameter before Module.__init__() call'),
        (('buffer',), 'cannot assign buffer before Module.__init__() call'),
    ]
    for args, msg in cases:
        with pytest.raises(AttributeError, match=re.escape(msg)):
            Early(*args)
    Early('attr', _tensor(False))  # no error
