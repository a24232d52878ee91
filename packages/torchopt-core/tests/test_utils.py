"""Tests for ``torchopt.utils``: extract/recover/clone/detach of modules and meta-optimizers."""

from __future__ import annotations

import optree
import pytest
import torch
from torch import nn

import torchopt
from torchopt import utils
from torchopt.utils import (
    ModuleState,
    extract_module_containers,
    extract_state_dict,
    module_clone,
    module_detach_,
    recover_state_dict,
    stop_gradient,
)

DTYPE = torch.float64


def make_net() -> nn.Module:
    """Two linear layers around a batch norm (parameters and buffers), float64."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).to(DTYPE)


def inputs(n: int = 5) -> torch.Tensor:
    """Return a batch of inputs for :func:`make_net`."""
    return torch.randn(n, 3, dtype=DTYPE)


def loss_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Return a scalar loss of ``net`` on ``x``."""
    return net(x).pow(2).mean()


def all_tensors(state: ModuleState) -> list[torch.Tensor]:
    """Every tensor of a module state, params then buffers."""
    return [t for c in (*state.params, *state.buffers) for t in c.values()]


# ----------------------------------------------------------------------------------------------
# API surface
# ----------------------------------------------------------------------------------------------


def test_all_and_top_level_reexports() -> None:
    """Public names of ``torchopt.utils`` and their top-level re-exports."""
    assert utils.__all__ == [
        'ModuleState',
        'extract_state_dict',
        'module_clone',
        'module_detach_',
        'recover_state_dict',
        'stop_gradient',
    ]
    for name in utils.__all__:
        if name != 'ModuleState':
            assert getattr(torchopt, name) is getattr(utils, name)
    assert ModuleState._fields == ('params', 'buffers', 'visual_contents', 'detach_buffers')
    assert ModuleState((), ()).visual_contents is None
    assert ModuleState((), ()).detach_buffers is False


def test_extract_module_containers_are_the_modules_own_dicts() -> None:
    """The containers are the live dicts, shared modules once."""
    lin = nn.Linear(2, 2)
    net = nn.Sequential(lin, nn.ReLU(), lin, nn.BatchNorm1d(2))  # shared module visited once
    params, buffers = extract_module_containers(net)
    assert len(params) == 2 and len(buffers) == 1
    assert params[0] is lin._parameters and params[1] is net[3]._parameters
    assert buffers[0] is net[3]._buffers
    assert extract_module_containers(net, with_buffers=False)[1] == ()
    with pytest.raises(TypeError, match='`module` must be an nn.Module'):
        extract_module_containers([lin])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# extract_state_dict: copy modes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('by', ['reference', 'ref'])
def test_extract_reference_is_identity(by: str) -> None:
    """``'reference'`` extracts the very same tensor objects."""
    net = make_net()
    state = extract_state_dict(net, by=by)
    params, buffers = extract_module_containers(net)
    assert len(state.params) == len(params) == 3
    assert len(state.buffers) == len(buffers) == 1
    for saved, live in zip((*state.params, *state.buffers), (*params, *buffers)):
        assert saved is not live
        assert list(saved) == list(live)
        assert all(saved[k] is live[k] for k in saved)
    assert state.visual_contents is None and state.detach_buffers is False


@pytest.mark.parametrize('by', ['copy', 'clone'])
def test_extract_copy_is_graph_connected_clone(by: str) -> None:
    """``'copy'`` extracts clones that back-propagate to the originals."""
    net = make_net()
    state = extract_state_dict(net, by=by)
    weight = net[0].weight
    saved = state.params[0]['weight']
    assert saved is not weight
    assert saved.data_ptr() != weight.data_ptr()
    torch.testing.assert_close(saved, weight, rtol=0, atol=0)
    assert type(saved.grad_fn).__name__ == 'CloneBackward0'
    # gradients flow back through the clone to the original parameter
    coef = torch.randn_like(weight)
    (grad,) = torch.autograd.grad((saved * coef).sum(), weight)
    torch.testing.assert_close(grad, coef, rtol=0, atol=0)
    # buffers (no grad) are cloned too, not shared
    mean = state.buffers[0]['running_mean']
    assert mean is not net[1].running_mean and mean.data_ptr() != net[1].running_mean.data_ptr()


@pytest.mark.parametrize('by', ['deepcopy', 'deepclone'])
def test_extract_deepcopy_is_detached_parameter(by: str) -> None:
    """``'deepcopy'`` extracts detached leaves of the same class and flag."""
    net = make_net()
    net[3].bias.requires_grad_(False)
    state = extract_state_dict(net, by=by)
    for saved, live in zip(all_tensors(state), all_tensors(extract_state_dict(net))):
        assert saved is not live and saved.data_ptr() != live.data_ptr()
        torch.testing.assert_close(saved, live, rtol=0, atol=0)
        assert saved.is_leaf and saved.grad_fn is None
        assert saved.requires_grad == live.requires_grad
        assert type(saved) is type(live)  # nn.Parameter stays nn.Parameter, buffers stay tensors
    assert isinstance(state.params[0]['weight'], nn.Parameter)
    assert not state.params[2]['bias'].requires_grad
    # independent storage: writing into the copy leaves the module alone
    before = net[0].weight.detach().clone()
    with torch.no_grad():
        state.params[0]['weight'].add_(1.0)
    torch.testing.assert_close(net[0].weight.detach(), before, rtol=0, atol=0)


def test_extract_deepcopy_of_non_leaf_parameters_is_plain_leaf_tensor() -> None:
    """A non-leaf parameter deep-copies to a plain leaf tensor."""
    net = make_net()
    torchopt.MetaSGD(net, lr=0.1).step(loss_of(net, inputs()))
    assert net[0].weight.grad_fn is not None
    state = extract_state_dict(net, by='deepcopy')
    saved = state.params[0]['weight']
    assert type(saved) is torch.Tensor and saved.is_leaf and saved.requires_grad
    torch.testing.assert_close(saved, net[0].weight.detach(), rtol=0, atol=0)


def test_extract_skips_none_entries_and_keeps_container_positions() -> None:
    """``None`` entries are skipped but containers keep their positions."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1)).to(DTYPE)
    state = extract_state_dict(net, by='deepcopy')
    assert [list(c) for c in state.params] == [['weight'], ['weight', 'bias']]
    recover_state_dict(net, state)
    assert net[0].bias is None
    assert net[0].weight is state.params[0]['weight']


# ----------------------------------------------------------------------------------------------
# extract_state_dict: devices, buffers, visual contents
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('device', ['cpu', torch.device('cpu')])
def test_extract_device_cpu(device: str | torch.device) -> None:
    """``device='cpu'`` on a CPU module: each mode as without a device."""
    net = make_net()
    ref = extract_state_dict(net, by='reference', device=device)
    assert ref.params[0]['weight'] is net[0].weight  # already there: `.to` is a no-op
    copy_ = extract_state_dict(net, by='copy', device=device)
    assert type(copy_.params[0]['weight'].grad_fn).__name__ == 'CloneBackward0'
    deep = extract_state_dict(net, by='deepcopy', device=device)
    assert deep.params[0]['weight'].device == torch.device('cpu')
    assert deep.params[0]['weight'].is_leaf


def test_extract_device_move_graph_shapes() -> None:
    """A real move (to the ``meta`` device): the recorded graph is as the reference says."""
    net = make_net()
    weight = net[0].weight

    moved = extract_state_dict(net, by='reference', device='meta').params[0]['weight']
    assert moved.device.type == 'meta'
    node = moved.grad_fn
    assert type(node).__name__ == 'ToCopyBackward0'
    assert node.next_functions[0][0].variable is weight  # ToCopy -> AccumulateGrad(weight)

    moved = extract_state_dict(net, by='copy', device='meta').params[0]['weight']
    node = moved.grad_fn
    assert type(node).__name__ == 'ToCopyBackward0'
    clone = node.next_functions[0][0]
    assert type(clone).__name__ == 'CloneBackward0'
    assert clone.next_functions[0][0].variable is weight  # ToCopy -> Clone -> AccumulateGrad

    moved = extract_state_dict(net, by='deepcopy', device='meta').params[0]['weight']
    assert moved.device.type == 'meta' and moved.is_leaf
    assert isinstance(moved, nn.Parameter) and moved.requires_grad
    buffers = extract_state_dict(net, by='deepcopy', device='meta').buffers[0]
    assert all(b.device.type == 'meta' for b in buffers.values())


def test_extract_with_and_detach_buffers() -> None:
    """with_buffers=False drops buffers; detach_buffers deep-copies them."""
    net = make_net()
    assert extract_state_dict(net, with_buffers=False).buffers == ()
    state = extract_state_dict(net, by='reference', detach_buffers=True)
    assert state.detach_buffers is True
    assert state.params[0]['weight'] is net[0].weight  # params still by reference
    for name, saved in state.buffers[0].items():
        live = getattr(net[1], name)
        assert saved is not live and saved.data_ptr() != live.data_ptr()
        torch.testing.assert_close(saved, live, rtol=0, atol=0)


def test_extract_visual_contents_for_leaf_and_non_leaf() -> None:
    """visual_contents maps leaves to names and grad_fns to (name, tensor)."""
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)).to(DTYPE)
    state = extract_state_dict(net, enable_visual=True, visual_prefix='net.')
    assert state.visual_contents == {p: 'net.' + n for n, p in net.named_parameters()}
    assert extract_state_dict(net, enable_visual=True).visual_contents == {
        p: n for n, p in net.named_parameters()
    }

    # a non-leaf parameter with its own node: grad_fn -> (prefix + name, tensor)
    w0 = net[0].weight
    net[0]._parameters['weight'] = w0 * 2.0
    contents = extract_state_dict(net, enable_visual=True, visual_prefix='p/').visual_contents
    new_w = net[0].weight
    assert contents[new_w.grad_fn] == ('p/0.weight', new_w)
    assert contents[new_w.grad_fn][1] is new_w
    assert contents[net[0].bias] == 'p/0.bias'
    assert len(contents) == 4


def test_extract_visual_contents_after_meta_step_names_every_parameter() -> None:
    """A foreach update shares one node: its entry names every parameter."""
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)).to(DTYPE)
    torchopt.MetaSGD(net, lr=0.1).step(net(torch.randn(3, 2, dtype=DTYPE)).sum())
    contents = extract_state_dict(net, enable_visual=True, visual_prefix='v.').visual_contents
    names = {n: p for n, p in net.named_parameters()}
    # every parameter is reachable through its grad_fn, and every name is listed exactly once
    listed = []
    for name, p in names.items():
        label, tensor = contents[p.grad_fn]
        assert 'v.' + name in label.split(', ')
        assert tensor.grad_fn is p.grad_fn
    for label, _ in contents.values():
        listed.extend(label.split(', '))
    assert sorted(listed) == sorted('v.' + n for n in names)


# ----------------------------------------------------------------------------------------------
# extract_state_dict on a MetaOptimizer
# ----------------------------------------------------------------------------------------------


def stepped_adam() -> tuple[nn.Module, torchopt.MetaAdam]:
    """Return a network and a MetaAdam that has taken one step."""
    net = make_net()
    opt = torchopt.MetaAdam(net, lr=0.05)
    opt.step(loss_of(net, inputs()))
    return net, opt


def test_extract_meta_optimizer_modes() -> None:
    """The three copy modes on a MetaOptimizer state."""
    _, opt = stepped_adam()
    live = opt.state_dict()
    live_leaves, live_spec = optree.tree_flatten(live)
    tensors = [t for t in live_leaves if isinstance(t, torch.Tensor)]
    assert tensors and any(t.grad_fn is not None for t in tensors)

    for by in ('reference', 'ref'):
        saved = extract_state_dict(opt, by=by)
        assert isinstance(saved, tuple)
        leaves, spec = optree.tree_flatten(saved)
        assert spec == live_spec
        assert all(a is b for a, b in zip(leaves, live_leaves))

    saved = extract_state_dict(opt, by='copy')
    leaves, spec = optree.tree_flatten(saved)
    assert spec == live_spec
    for a, b in zip(leaves, live_leaves):
        if isinstance(b, torch.Tensor) and b.requires_grad:  # moments (step counts never are)
            assert a is not b and type(a.grad_fn).__name__ == 'CloneBackward0'
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        else:
            assert a == b  # step counts are kept as they are

    saved = extract_state_dict(opt, by='deepcopy')
    for a, b in zip(optree.tree_leaves(saved), live_leaves):
        if isinstance(b, torch.Tensor):
            assert a is not b and a.is_leaf and a.requires_grad == b.requires_grad
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# recover_state_dict
# ----------------------------------------------------------------------------------------------


def test_recover_module_round_trip_after_meta_steps() -> None:
    """Restore a module after MetaSGD steps, by reference and by snapshot."""
    net = make_net()
    x = inputs()
    with torch.no_grad():
        out0 = net.eval()(x)
    net.train()
    state = extract_state_dict(net, by='reference')
    snapshot = extract_state_dict(net, by='deepcopy')
    mean0 = net[1].running_mean.clone()
    opt = torchopt.MetaSGD(net, lr=0.5)
    for _ in range(2):
        opt.step(loss_of(net, x))  # also moves the batch-norm running statistics in place
    assert net[0].weight is not state.params[0]['weight']
    assert net[0].weight.grad_fn is not None

    recover_state_dict(net, state)
    for container, saved in zip(extract_module_containers(net)[0], state.params):
        assert all(container[k] is saved[k] for k in saved)
    # buffers saved by reference were updated in place, so they hold the new statistics
    assert net[1].running_mean is state.buffers[0]['running_mean']
    assert not torch.equal(net[1].running_mean, mean0)

    recover_state_dict(net, snapshot)  # a deep copy restores everything
    torch.testing.assert_close(net[1].running_mean, mean0, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), out0, rtol=0, atol=0)


def test_recover_with_detach_buffers_copies_again() -> None:
    """A detach_buffers state restores fresh buffer copies."""
    net = make_net()
    state = extract_state_dict(net, detach_buffers=True)
    recover_state_dict(net, state)
    for name, saved in state.buffers[0].items():
        live = getattr(net[1], name)
        assert live is not saved
        torch.testing.assert_close(live, saved, rtol=0, atol=0)
    net(inputs())  # a training forward moves the running statistics in place
    assert not torch.equal(net[1].running_mean, state.buffers[0]['running_mean'])


def test_recover_without_buffers_leaves_buffers_alone() -> None:
    """A state without buffers restores the parameters only."""
    net = make_net()
    state = extract_state_dict(net, by='deepcopy', with_buffers=False)
    mean = net[1].running_mean
    recover_state_dict(net, state)
    assert net[1].running_mean is mean
    assert net[0].weight is state.params[0]['weight']


def test_recover_meta_optimizer_replays_the_same_step() -> None:
    """Restore module and optimizer after a step, redo the step: the same result (float64)."""
    x = inputs()
    net, opt = stepped_adam()
    module_state = extract_state_dict(net, by='deepcopy')
    opt_state = extract_state_dict(opt, by='deepcopy')
    net.eval()  # freeze the batch-norm statistics so both replays see the same function
    opt.step(loss_of(net, x))
    first = [p.detach().clone() for p in net.parameters()]
    first_state = [
        t.detach().clone()
        for t in optree.tree_leaves(opt.state_dict())
        if isinstance(t, torch.Tensor)
    ]

    recover_state_dict(net, module_state)
    recover_state_dict(opt, opt_state)
    assert all(
        a is b for a, b in zip(optree.tree_leaves(opt.state_dict()), optree.tree_leaves(opt_state))
    )
    opt.step(loss_of(net, x))
    for a, b in zip(net.parameters(), first):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)
    again = [
        t.detach() for t in optree.tree_leaves(opt.state_dict()) if isinstance(t, torch.Tensor)
    ]
    for a, b in zip(again, first_state):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_recover_errors() -> None:
    """Wrong targets, wrong state kinds and mismatched structures."""
    net = make_net()
    _, opt = stepped_adam()
    with pytest.raises(TypeError, match='`target` must be an nn.Module or a MetaOptimizer'):
        recover_state_dict([net], extract_state_dict(net))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='`state` must be a ModuleState'):
        recover_state_dict(net, extract_state_dict(opt))
    with pytest.raises(TypeError, match='`state` must be a sequence of optimizer states'):
        recover_state_dict(opt, extract_state_dict(net))
    with pytest.raises(ValueError, match='holds 2 optimizer states, the MetaOptimizer has 1'):
        recover_state_dict(opt, extract_state_dict(opt) * 2)
    other = nn.Linear(3, 1)
    with pytest.raises(ValueError, match='`state` does not match `target`'):
        recover_state_dict(other, extract_state_dict(net))
    renamed = nn.Sequential(nn.Linear(3, 1))
    bad = ModuleState(params=({'kernel': torch.zeros(1)},), buffers=())
    with pytest.raises(ValueError, match=r"parameter \['kernel'\] are not in the module"):
        recover_state_dict(renamed, bad)


# ----------------------------------------------------------------------------------------------
# module_clone
# ----------------------------------------------------------------------------------------------


def test_module_clone_reference_shares_tensors() -> None:
    """``'reference'`` clones a new module over the same tensors."""
    net = make_net()
    clone = module_clone(net, by='reference')
    assert clone is not net and clone[0] is not net[0]
    for a, b in zip(all_tensors(extract_state_dict(clone)), all_tensors(extract_state_dict(net))):
        assert a is b
    with torch.no_grad():
        net[0].weight.add_(1.0)  # in place: visible through the clone
    assert torch.equal(clone[0].weight, net[0].weight)


def test_module_clone_deepcopy_is_independent() -> None:
    """``'deepcopy'`` clones an independent module."""
    net = make_net()
    x = inputs()
    clone = module_clone(net, by='deepcopy')
    for a, b in zip(all_tensors(extract_state_dict(clone)), all_tensors(extract_state_dict(net))):
        assert a is not b and a.data_ptr() != b.data_ptr()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert isinstance(clone[0].weight, nn.Parameter)
    loss_of(clone, x).backward()
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None for p in clone.parameters())
    with torch.no_grad():
        clone[0].weight.zero_()
    assert not torch.equal(net[0].weight, clone[0].weight)


def test_module_clone_copy_backpropagates_to_the_original() -> None:
    """``'copy'`` clones back-propagate to the original's parameters."""
    net = make_net().eval()
    x = inputs()
    clone = module_clone(net, by='clone')
    assert type(clone[0].weight.grad_fn).__name__ == 'CloneBackward0'
    grads = torch.autograd.grad(loss_of(clone, x), list(net.parameters()))
    expected = torch.autograd.grad(loss_of(net, x), list(net.parameters()))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_module_clone_after_meta_step_and_detach_buffers() -> None:
    """Cloning works with non-leaf parameters; detach_buffers copies buffers."""
    net = make_net()
    torchopt.MetaSGD(net, lr=0.1).step(loss_of(net, inputs()))
    clone = module_clone(net, by='reference', detach_buffers=True)  # non-leaf tensors shared
    assert clone[0].weight is net[0].weight
    assert clone[1].running_mean is not net[1].running_mean
    torch.testing.assert_close(clone[1].running_mean, net[1].running_mean, rtol=0, atol=0)
    deep = module_clone(net, by='deepcopy', device='cpu')
    assert deep[0].weight.is_leaf and deep[0].weight.requires_grad


def test_module_clone_meta_optimizer() -> None:
    """Cloning a MetaOptimizer by reference and by deep copy."""
    _, opt = stepped_adam()
    ref = module_clone(opt, by='reference')
    assert ref is not opt and type(ref) is type(opt)
    assert all(
        a is b
        for a, b in zip(optree.tree_leaves(ref.state_dict()), optree.tree_leaves(opt.state_dict()))
    )
    deep = module_clone(opt, by='deepcopy')
    for a, b in zip(optree.tree_leaves(deep.state_dict()), optree.tree_leaves(opt.state_dict())):
        if isinstance(b, torch.Tensor):
            assert a is not b and a.is_leaf
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        else:
            assert a == b


def test_module_clone_tensor_tree() -> None:
    """Cloning a tree of tensors in each mode; a non-tensor leaf raises."""
    w = torch.randn(3, dtype=DTYPE, requires_grad=True)
    tree = {'a': w, 'b': (w * 2, None)}
    ref = module_clone(tree)
    assert ref is not tree and ref['a'] is w and ref['b'][0] is tree['b'][0] and ref['b'][1] is None
    deep = module_clone(tree, by='deepclone')
    assert deep['a'] is not w and deep['a'].is_leaf and deep['b'][0].is_leaf
    assert deep['b'][0].requires_grad
    torch.testing.assert_close(deep['b'][0], tree['b'][0].detach(), rtol=0, atol=0)
    copied = module_clone([w], by='copy', device='meta')
    assert copied[0].device.type == 'meta' and copied[0].grad_fn is not None
    with pytest.raises(TypeError, match='found a leaf of type int'):
        module_clone({'a': w, 'b': 3})


# ----------------------------------------------------------------------------------------------
# stop_gradient / module_detach_
# ----------------------------------------------------------------------------------------------


class Scalar(nn.Module):
    """One trainable scalar parameter and one frozen one."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.5], dtype=DTYPE))
        self.frozen = nn.Parameter(torch.tensor([0.5], dtype=DTYPE), requires_grad=False)


@pytest.mark.parametrize('cut', [False, True])
def test_stop_gradient_truncates_the_meta_gradient(cut: bool) -> None:
    """Meta-gradient of an unrolled MetaSGD against the closed form, with and without a cut."""
    lr, w0 = 0.1, 1.5
    a = torch.tensor(0.7, dtype=DTYPE, requires_grad=True)
    net = Scalar()
    opt = torchopt.MetaSGD(net, lr=lr)
    opt.step((a * net.w.pow(2)).sum())  # w1 = w0 (1 - 2 lr a)
    if cut:
        assert module_detach_(net) is net
        assert net.w.grad_fn is None and net.w.requires_grad and not net.frozen.requires_grad
    opt.step((a * net.w.pow(2)).sum())  # w2 = w1 (1 - 2 lr a)
    (grad,) = torch.autograd.grad(net.w.sum(), a)
    k = 1 - 2 * lr * a.item()
    expected = w0 * k * (-2 * lr) if cut else w0 * 2 * k * (-2 * lr)
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=DTYPE), rtol=1e-12, atol=0)


def test_stop_gradient_module_ignores_buffers() -> None:
    """On a module, parameters are cut and buffers left alone (as upstream)."""
    net = make_net()
    torchopt.MetaSGD(net, lr=0.1).step(loss_of(net, inputs()))
    values = [p.detach().clone() for p in net.parameters()]
    net[1].running_mean = net[0].weight.sum(1)  # a non-leaf buffer
    stop_gradient(net)
    for p, v in zip(net.parameters(), values):
        assert p.grad_fn is None and p.requires_grad
        torch.testing.assert_close(p, v, rtol=0, atol=0)
    assert net[1].running_mean.grad_fn is not None  # buffers are not touched (as upstream)


def test_stop_gradient_module_state_keeps_visual_contents() -> None:
    """On a ModuleState, params and buffers are cut, visual_contents kept."""
    net = make_net()
    torchopt.MetaSGD(net, lr=0.1).step(loss_of(net, inputs()))
    net[1].running_var = net[0].weight.pow(2).sum(1)
    state = extract_state_dict(net, by='copy', enable_visual=True)
    visual = dict(state.visual_contents)
    stop_gradient(state)
    assert all(t.grad_fn is None for t in all_tensors(state))
    assert state.params[0]['weight'].requires_grad
    assert state.buffers[0]['running_var'].requires_grad  # requires_grad is kept
    assert not state.buffers[0]['running_mean'].requires_grad
    assert state.visual_contents == visual
    assert all(t.grad_fn is not None for _, t in state.visual_contents.values())
    assert net[0].weight.grad_fn is not None  # the copies were detached, not the module


def test_stop_gradient_meta_optimizer_and_tree() -> None:
    """On a MetaOptimizer state and on tensor trees, flags kept."""
    _, opt = stepped_adam()
    tensors = [t for t in optree.tree_leaves(opt.state_dict()) if isinstance(t, torch.Tensor)]
    flags = [t.requires_grad for t in tensors]
    assert any(t.grad_fn is not None for t in tensors)
    assert module_detach_(opt) is opt
    assert all(t.grad_fn is None for t in tensors)
    assert [t.requires_grad for t in tensors] == flags

    w = torch.randn(2, dtype=DTYPE, requires_grad=True)
    tree = {'y': w * 3, 'z': [w + 1, 7], 'n': None}
    y = tree['y']
    stop_gradient(tree)
    assert tree['y'] is y and y.grad_fn is None and y.requires_grad
    assert tree['z'][0].grad_fn is None and tree['z'][1] == 7
    torch.testing.assert_close(y, 3 * w.detach(), rtol=0, atol=0)
    single = w * 2
    stop_gradient(single)
    assert single.grad_fn is None and single.requires_grad


# ----------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------


def test_bad_copy_mode_device_and_targets() -> None:
    """A bad ``by``/``device``/target raises an error naming it."""
    net = make_net()
    for fn in (extract_state_dict, module_clone):
        with pytest.raises(ValueError, match="`by` must be one of 'reference'.*got 'shallow'"):
            fn(net, by='shallow')  # type: ignore[call-overload, arg-type]
        with pytest.raises(ValueError, match='`by` must be one of'):
            fn(net, by=None)  # type: ignore[call-overload, arg-type]
        with pytest.raises(AssertionError, match='`by` must be one of'):  # upstream's type
            fn(net, by='bogus')  # type: ignore[call-overload, arg-type]
        with pytest.raises(ValueError, match='`device` is not a valid device'):
            fn(net, device='nowhere')  # type: ignore[call-overload]
        with pytest.raises(TypeError, match='`device` must be a torch.device'):
            fn(net, device=1.5)  # type: ignore[call-overload, arg-type]
    msg = '`target` must be an nn.Module or a MetaOptimizer, got dict'
    with pytest.raises(TypeError, match=msg):
        extract_state_dict({'w': torch.zeros(1)})  # type: ignore[call-overload]
    with pytest.raises(TypeError, match='`target` must be a ModuleState, an nn.Module'):
        stop_gradient(3)  # type: ignore[arg-type]
