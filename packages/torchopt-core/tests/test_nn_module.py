"""Tests for ``torchopt.nn.MetaGradientModule``."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import torchopt
from torchopt.nn import MetaGradientModule
from torchopt.nn.module import MetaInputsContainer

DTYPE = torch.float64


class Inner(MetaGradientModule):
    """Assigns whatever it is given, plus its own head."""

    def __init__(self, meta_net: nn.Module, scale: torch.Tensor, *, extra=None) -> None:
        super().__init__()
        self.meta_net = meta_net
        self.scale = scale
        self.head = nn.Linear(2, 1).to(DTYPE)
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the meta-net, the head, then the scale."""
        return self.head(self.meta_net(x)) * self.scale


def make_inner(training: bool = True) -> tuple[Inner, nn.Module, torch.Tensor]:
    """Build an ``Inner`` from a fresh meta-module and meta-scale (float64)."""
    meta_net = nn.Sequential(nn.Linear(3, 2), nn.Tanh()).to(DTYPE)
    meta_net.train(training)
    scale = torch.tensor(2.0, dtype=DTYPE, requires_grad=True)
    return Inner(meta_net, scale), meta_net, scale


# ----------------------------------------------------------------------------------------------
# construction and classification
# ----------------------------------------------------------------------------------------------


def test_all() -> None:
    """The public names of ``torchopt.nn.module``."""
    assert torchopt.nn.module.__all__ == ['MetaGradientModule', 'MetaInputsContainer']
    assert torchopt.nn.MetaGradientModule is MetaGradientModule


def test_new_records_meta_inputs_from_nested_arguments() -> None:
    """Tensors and modules anywhere in args/kwargs are recorded."""
    w = torch.ones(2, requires_grad=True)
    no_grad = torch.ones(2)
    lin = nn.Linear(2, 2)
    seq = nn.Sequential(lin, nn.ReLU())
    other = nn.Linear(1, 1)

    class Probe(MetaGradientModule):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

    probe = Probe([w, (no_grad, {'m': seq})], k=other, n=None)
    inputs = probe._meta_inputs
    assert isinstance(inputs, MetaInputsContainer)
    assert w in inputs.meta_parameters and no_grad not in inputs.meta_parameters
    assert set(seq.parameters()) | set(other.parameters()) | {w} == inputs.meta_parameters
    assert inputs.meta_modules == set(seq.modules()) | {other}
    assert probe._meta_parameters == {} and probe._meta_modules == {}


def test_assignment_classifies_meta_inputs() -> None:
    """Constructor inputs land in the meta stores (eval-mode modules: test_drop_in_nn_module)."""
    training = True
    inner, meta_net, scale = make_inner(training)
    assert inner._meta_modules == {'meta_net': meta_net}
    assert inner._meta_parameters == {'scale': scale}
    assert list(inner._modules) == ['head']
    assert inner.meta_net is meta_net and inner.scale is scale
    assert [n for n, _ in inner.named_parameters()] == ['head.weight', 'head.bias']
    assert [n for n, _ in inner.named_meta_parameters()] == [
        'scale',
        'meta_net.0.weight',
        'meta_net.0.bias',
    ]
    assert set(inner.state_dict()) == {'head.weight', 'head.bias'}
    assert list(inner.children()) == [inner.head]
    assert meta_net.training is training  # the flag is left as it was


def test_setattr_rules() -> None:
    """Each kind of value lands in the store the class docstring promises."""
    inner, meta_net, scale = make_inner()
    # a plain (non-Parameter) tensor that requires grad, not an input: a parameter
    w = torch.randn(2, dtype=DTYPE, requires_grad=True) * 3.0
    inner.w = w
    assert inner._parameters['w'] is w and inner.w is w
    # a tensor that does not require grad: a plain attribute
    c = torch.zeros(1)
    inner.c = c
    assert inner.__dict__['c'] is c and 'c' not in inner._parameters
    # a buffer of that name: the buffer is replaced
    inner.register_buffer('buf', torch.zeros(1))
    new_buf = torch.ones(1)
    inner.buf = new_buf
    assert inner._buffers['buf'] is new_buf
    with pytest.raises(TypeError, match="cannot assign 'int' as buffer 'buf'"):
        inner.buf = 3
    # a submodule of a meta-module is a meta-module; its parameter is a meta-parameter
    inner.first = meta_net[0]
    assert inner._meta_modules['first'] is meta_net[0]
    inner.first_w = meta_net[0].weight
    assert inner._meta_parameters['first_w'] is meta_net[0].weight
    # a non-input module: a child
    child = nn.Linear(1, 1)
    inner.child = child
    assert inner._modules['child'] is child
    # non-tensor values: plain attributes
    inner.extra = 'hello'
    assert inner.extra == 'hello' and inner.__dict__['extra'] == 'hello'


def test_reassignment_moves_names_between_stores() -> None:
    """Reassigning a name removes it from its previous store."""
    inner, meta_net, scale = make_inner()
    w = torch.ones(1, requires_grad=True)
    inner.scale = w  # was a meta-parameter, now a parameter
    assert 'scale' not in inner._meta_parameters and inner._parameters['scale'] is w
    inner.scale = scale  # back to a meta-parameter
    assert 'scale' not in inner._parameters and inner._meta_parameters['scale'] is scale
    inner.head = meta_net  # a child replaced by a meta-module
    assert 'head' not in inner._modules and inner._meta_modules['head'] is meta_net
    inner.x = torch.zeros(1)
    inner.x = torch.ones(1, requires_grad=True)  # plain attribute -> parameter
    assert 'x' not in inner.__dict__ and 'x' in inner._parameters
    inner.register_buffer('b', torch.zeros(1), persistent=False)
    inner.b = nn.Linear(1, 1)  # buffer -> child module
    assert 'b' not in inner._buffers and 'b' not in inner._non_persistent_buffers_set
    assert 'b' in inner._modules


def test_none_clears_slots_and_wrong_types_raise() -> None:
    """``None`` clears a slot; a value of the wrong kind raises TypeError."""
    inner, _, _ = make_inner()
    inner.w = torch.ones(1, requires_grad=True)
    inner.w = None
    assert 'w' in inner._parameters and inner.w is None
    inner.scale = None
    assert 'scale' in inner._meta_parameters and inner.scale is None
    inner.meta_net = None
    assert 'meta_net' in inner._meta_modules and inner.meta_net is None
    inner.head = None
    assert 'head' in inner._modules and inner.head is None
    assert list(inner.named_meta_parameters()) == []

    inner2, _, _ = make_inner()
    inner2.w = torch.ones(1, requires_grad=True)
    with pytest.raises(TypeError, match=r"cannot assign 'torch.FloatTensor' as parameter 'w' "):
        inner2.w = torch.ones(1)  # does not require grad
    linear = 'torch.nn.modules.linear.Linear'
    with pytest.raises(TypeError, match=rf"cannot assign '{linear}' as parameter 'w'"):
        inner2.w = nn.Linear(1, 1)
    with pytest.raises(TypeError, match="cannot assign 'int' as meta-parameter 'scale'"):
        inner2.scale = 1
    with pytest.raises(TypeError, match="cannot assign 'int' as child module 'head'"):
        inner2.head = 1
    with pytest.raises(TypeError, match="cannot assign 'int' as meta-module 'meta_net'"):
        inner2.meta_net = 1


def test_getattr_and_delattr() -> None:
    """Meta entries are attributes; ``del`` removes them from their store."""
    inner, meta_net, scale = make_inner()
    with pytest.raises(AttributeError, match="'Inner' object has no attribute 'nope'"):
        inner.nope  # noqa: B018
    assert 'scale' in dir(inner) and 'meta_net' in dir(inner)
    del inner.scale
    del inner.meta_net
    del inner.head
    assert inner._meta_parameters == {} and inner._meta_modules == {} and inner._modules == {}
    with pytest.raises(AttributeError):
        inner.scale  # noqa: B018
    inner.plain = 1
    del inner.plain
    assert not hasattr(inner, 'plain')
    with pytest.raises(AttributeError):
        del inner.plain


# ----------------------------------------------------------------------------------------------
# registration and its error messages
# ----------------------------------------------------------------------------------------------


def test_register_parameter() -> None:
    """register_parameter: every error message, then a plain tensor accepted."""
    inner, _, scale = make_inner()
    msg = (
        "cannot assign Tensor that is a meta-parameter to parameter 'p'. "
        'Use self.register_meta_parameter() instead.'
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        inner.register_parameter('p', scale)
    with pytest.raises(ValueError, match=re.escape("`requires_grad=False` to parameter 'p'")):
        inner.register_parameter('p', torch.zeros(1))
    with pytest.raises(TypeError, match=re.escape("cannot assign 'int' object to parameter 'p'")):
        inner.register_parameter('p', 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=re.escape('parameter name should be a string. Got bytes')):
        inner.register_parameter(b'p', None)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match=re.escape("parameter name can't contain '.'")):
        inner.register_parameter('a.b', None)
    with pytest.raises(KeyError, match=re.escape("parameter name can't be empty string ''")):
        inner.register_parameter('', None)
    with pytest.raises(KeyError, match=re.escape("attribute 'head' already exists")):
        inner.register_parameter('head', None)
    w = torch.ones(1, requires_grad=True)
    inner.register_parameter('p', w)
    assert inner.p is w
    inner.register_parameter('p', None)
    assert inner._parameters['p'] is None


def test_register_meta_parameter() -> None:
    """register_meta_parameter: the meta- variants of the error messages."""
    inner, _, _ = make_inner()
    w = torch.ones(1, requires_grad=True)  # need not be a constructor input
    inner.register_meta_parameter('m', w)
    assert inner._meta_parameters['m'] is w and list(inner.meta_parameters())[1] is w
    msg = 'meta-parameter name should be a string. Got bytes'
    with pytest.raises(TypeError, match=re.escape(msg)):
        inner.register_meta_parameter(b'm', None)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match=re.escape("meta-parameter name can't contain '.'")):
        inner.register_meta_parameter('a.b', None)
    with pytest.raises(KeyError, match=re.escape("meta-parameter name can't be empty string ''")):
        inner.register_meta_parameter('', None)
    with pytest.raises(KeyError, match=re.escape("attribute 'head' already exists")):
        inner.register_meta_parameter('head', None)
    with pytest.raises(ValueError, match=re.escape("`requires_grad=False` to meta-parameter 'q'")):
        inner.register_meta_parameter('q', torch.zeros(1))
    msg = "cannot assign 'str' object to meta-parameter 'q'"
    with pytest.raises(TypeError, match=re.escape(msg)):
        inner.register_meta_parameter('q', 'x')  # type: ignore[arg-type]


def test_add_module_and_meta_module() -> None:
    """add_module rejects meta-inputs; add_meta_module accepts any module."""
    inner, meta_net, _ = make_inner()
    msg = (
        "cannot add module that is a meta-module to module 'm'. Use self.add_meta_module() instead."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        inner.add_module('m', meta_net)
    with pytest.raises(ValueError, match=re.escape(msg)):
        inner.register_module('m', meta_net[1])
    with pytest.raises(TypeError, match='int is not a Module subclass'):
        inner.add_module('m', 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='module name should be a string. Got int'):
        inner.add_module(1, None)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match=re.escape("module name can't contain '.', got: 'a.b'")):
        inner.add_module('a.b', None)
    with pytest.raises(KeyError, match=re.escape("module name can't be empty string ''")):
        inner.add_module('', None)
    with pytest.raises(KeyError, match=re.escape("attribute 'scale' already exists")):
        inner.add_module('scale', None)
    lin = nn.Linear(1, 1)
    inner.register_module('lin', lin)
    assert inner._modules['lin'] is lin

    inner.add_meta_module('any', lin)  # any module can be registered as a meta-module
    inner.register_meta_module('mn', meta_net)
    assert inner._meta_modules['mn'] is meta_net
    with pytest.raises(TypeError, match='int is not a Module subclass'):
        inner.add_meta_module('m', 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='meta-module name should be a string. Got bytes'):
        inner.add_meta_module(b'm', None)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match=re.escape("meta-module name can't contain '.', got: 'a.b'")):
        inner.add_meta_module('a.b', None)
    with pytest.raises(KeyError, match=re.escape("meta-module name can't be empty string ''")):
        inner.add_meta_module('', None)
    with pytest.raises(KeyError, match=re.escape("attribute 'head' already exists")):
        inner.register_meta_module('head', None)


def test_assignment_before_init() -> None:
    """Assignments before ``__init__`` name the missing initialiser."""
    t = torch.ones(1, requires_grad=True)

    class Early(MetaGradientModule):
        def __init__(self, what: str) -> None:
            if what == 'param':
                self.p = torch.ones(1, requires_grad=True)
            elif what == 'module':
                self.m = nn.Linear(1, 1)
            elif what == 'buffer':
                self.register_buffer('b', torch.ones(1))
            super().__init__()

    for what, msg in [
        ('param', 'cannot assign parameters before Module.__init__() call'),
        ('module', 'cannot assign module before Module.__init__() call'),
        ('buffer', 'cannot assign buffer before Module.__init__() call'),
    ]:
        with pytest.raises(AttributeError, match=re.escape(msg)):
            Early(what)

    # nn.Module initialised, but the meta-containers were never created (``__new__`` bypassed)
    bare = object.__new__(Early)
    nn.Module.__init__(bare)
    with pytest.raises(
        AttributeError,
        match=re.escape('cannot assign meta-parameters before MetaGradientModule.__init__() call'),
    ):
        bare.p = t
    with pytest.raises(
        AttributeError,
        match=re.escape('cannot assign meta-parameter before MetaGradientModule.__init__() call'),
    ):
        bare.register_meta_parameter('p', t)
    with pytest.raises(
        AttributeError,
        match=re.escape('cannot assign module before MetaGradientModule.__init__() call'),
    ):
        bare.m = nn.Linear(1, 1)
    with pytest.raises(
        AttributeError,
        match=re.escape('cannot assign meta-module before MetaGradientModule.__init__() call'),
    ):
        bare.add_meta_module('m', nn.Linear(1, 1))


# ----------------------------------------------------------------------------------------------
# iteration
# ----------------------------------------------------------------------------------------------


def test_meta_iterators() -> None:
    """Meta iterators: order, de-duplication, prefixes, recurse and memo."""
    inner, meta_net, scale = make_inner()
    inner.again = scale  # the same tensor under a second name: yielded once
    inner.twice = meta_net  # the same module under a second name: yielded once
    inner.register_meta_parameter('none', None)
    inner.register_meta_module('nothing', None)
    lin_w, lin_b = meta_net[0].weight, meta_net[0].bias

    assert list(inner.meta_parameters()) == [scale, lin_w, lin_b]
    assert list(inner.named_meta_parameters(prefix='outer')) == [
        ('outer.scale', scale),
        ('outer.meta_net.0.weight', lin_w),
        ('outer.meta_net.0.bias', lin_b),
    ]
    assert list(inner.named_meta_parameters(recurse=False)) == [('scale', scale)]
    assert list(inner.named_meta_children()) == [('meta_net', meta_net)]
    assert list(inner.meta_children()) == [meta_net]
    assert list(inner.named_meta_modules()) == [
        ('meta_net', meta_net),
        ('meta_net.0', meta_net[0]),
        ('meta_net.1', meta_net[1]),
    ]
    assert list(inner.meta_modules()) == [meta_net, meta_net[0], meta_net[1]]
    prefixed = [n for n, _ in inner.named_meta_modules(prefix='p')]
    assert prefixed[:2] == ['p.meta_net', 'p.meta_net.0']
    names = [n for n, _ in inner.named_meta_modules(remove_duplicate=False)]
    assert names[:3] == ['meta_net', 'meta_net.0', 'meta_net.1'] and 'twice' in names
    assert list(inner.named_meta_modules(memo={inner})) == []


# ----------------------------------------------------------------------------------------------
# behaviour with optimizers and autograd
# ----------------------------------------------------------------------------------------------


def test_meta_optimizer_updates_parameters_only_and_meta_gradient_matches_unroll() -> None:
    """One MetaSGD step on the inner parameters; the meta-gradient against a hand unroll."""
    inner, meta_net, scale = make_inner()
    x = torch.randn(4, 3, dtype=DTYPE)
    y = torch.randn(4, 1, dtype=DTYPE)
    lr = 0.3
    w0, b0 = inner.head.weight.detach().clone(), inner.head.bias.detach().clone()
    meta_before = [p.detach().clone() for p in inner.meta_parameters()]

    opt = torchopt.MetaSGD(inner, lr=lr)
    opt.step((inner(x) - y).pow(2).mean())
    for p, before in zip(inner.meta_parameters(), meta_before):
        assert p.is_leaf
        torch.testing.assert_close(p.detach(), before, rtol=0, atol=0)
    outer = (inner(x) - y).pow(2).mean()
    meta = list(inner.meta_parameters())
    grads = torch.autograd.grad(outer, meta)

    # the same computation written out by hand, functional in the meta-parameters
    def unrolled(s, mw, mb):
        feats = torch.tanh(x @ mw.T + mb)
        w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
        inner_loss = ((feats @ w.T + b) * s - y).pow(2).mean()
        gw, gb = torch.autograd.grad(inner_loss, (w, b), create_graph=True)
        w1, b1 = w - lr * gw, b - lr * gb
        return ((feats @ w1.T + b1) * s - y).pow(2).mean()

    meta_copies = [p.detach().clone().requires_grad_() for p in meta]
    expected = torch.autograd.grad(unrolled(*meta_copies), meta_copies)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


def test_deepcopy_and_module_clone_keep_meta_inputs() -> None:
    """Copies keep classifying; module_clone shares the outer variables."""
    inner, meta_net, scale = make_inner()
    copied = copy.deepcopy(inner)
    assert copied.scale is not scale and torch.equal(copied.scale, scale)
    assert copied.scale in copied._meta_inputs.meta_parameters  # the copied record follows
    w = torch.ones(1, requires_grad=True)
    copied.w = w
    assert 'w' in copied._parameters

    clone = torchopt.module_clone(inner, by='deepcopy')
    assert clone.scale is scale and clone.meta_net is meta_net  # outer variables are shared
    assert clone.head.weight is not inner.head.weight
    torch.testing.assert_close(clone.head.weight, inner.head.weight, rtol=0, atol=0)
    clone.scale = scale
    assert clone._meta_parameters['scale'] is scale
