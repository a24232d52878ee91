"""Real rendering through Graphviz ``dot``: names in the SVG, fused ops, missing ``dot``."""

from __future__ import annotations

import re
from typing import NamedTuple

import graphviz
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchopt
from torchopt.base import GradientTransformation
from torchopt_viz import GraphvizNotFoundError, make_dot, save_graph

LR, B1, B2, EPS = 0.05, 0.9, 0.999, 1e-8


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 1)

    def forward(self, x, meta):
        return self.fc2(torch.tanh(self.fc1(x)) * meta)


def _svg(dot) -> str:
    return dot.pipe(format='svg', encoding='utf-8')


def _svg_node_count(svg: str) -> int:
    return len(re.findall(r'<g id="node\d+" class="node">', svg))


def _unroll(make_optimizer, steps=2):
    """``steps`` inner steps with a meta-parameter; module states with names per step."""
    torch.manual_seed(0)
    net = Net().double()
    meta = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    optimizer = make_optimizer(net)
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(6, 1, dtype=torch.float64)
    states = []
    for step in range(steps + 1):
        states.append(
            torchopt.extract_state_dict(net, enable_visual=True, visual_prefix=f'step{step}.')
        )
        if step < steps:
            optimizer.step(F.mse_loss(net(x, meta), y))
    return net, meta, F.mse_loss(net(x, meta), y), states


PARAM_NAMES = ('fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias')


def test_svg_names_every_step_and_the_meta_parameter(dot_program):
    """``extract_state_dict(..., enable_visual=True)`` per step: leaves and updated parameters."""
    _, meta, loss, states = _unroll(lambda net: torchopt.MetaAdam(net, lr=LR))
    svg = _svg(make_dot(loss, [*states, {'meta_param': meta}]))
    for step in range(3):
        for name in PARAM_NAMES:
            assert f'step{step}.{name}' in svg
    assert 'meta_param' in svg
    assert 'step3.' not in svg


def test_svg_names_with_named_parameters_per_step(dot_program):
    """From ``named_parameters()`` snapshots, as upstream: the leaves' names, not the updates'."""
    torch.manual_seed(0)
    net = Net().double()
    meta = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    optimizer = torchopt.MetaAdam(net, lr=LR)
    x = torch.randn(6, 3, dtype=torch.float64)
    snapshots = []
    for step in range(2):
        snapshots.append({f'step{step}.{k}': p for k, p in net.named_parameters()})
        optimizer.step(net(x, meta).pow(2).mean())
    snapshots.append({f'step2.{k}': p for k, p in net.named_parameters()})
    loss = net(x, meta).pow(2).mean()
    svg = _svg(make_dot(loss, [*snapshots, (('meta_param', meta),)]))
    for name in PARAM_NAMES:
        assert f'step0.{name}' in svg
    assert 'meta_param' in svg
    assert 'step1.' not in svg  # the updated parameters' grad_fn nodes stay unnamed
    assert 'step2.' not in svg
    assert _svg_node_count(svg) == _svg_node_count(_svg(make_dot(loss)))  # names add no nodes


def test_png_rendering(dot_program):
    w = torch.randn(3, requires_grad=True)
    png = make_dot((w * 2).sum(), {'w': w}).pipe(format='png')
    assert png.startswith(b'\x89PNG\r\n\x1a\n')


def test_show_saved_and_show_attrs_change_the_svg(dot_program):
    w = torch.randn(2, 3, requires_grad=True)
    y = w.exp().permute(1, 0).sum()
    plain = _svg(make_dot(y))
    saved = _svg(make_dot(y, show_saved=True))
    attrs = _svg(make_dot(y, show_attrs=True))
    assert 'result' not in plain and 'result' in saved  # ExpBackward0 saves its result
    assert _svg_node_count(saved) == _svg_node_count(plain) + 1
    assert 'dims' not in plain and 'dims' in attrs  # PermuteBackward0's attribute
    assert _svg_node_count(attrs) == _svg_node_count(plain)


# ------------------------------------------------------------------ fused op: one node


def _adam_math(grads, mus, nus, count):
    mus = [B1 * m + (1 - B1) * g for m, g in zip(mus, grads)]
    nus = [B2 * n + (1 - B2) * g * g for n, g in zip(nus, grads)]
    bc1, bc2 = 1 - B1**count, 1 - B2**count
    updates = [-LR * (m / bc1) / ((n / bc2).sqrt() + EPS) for m, n in zip(mus, nus)]
    return updates, mus, nus


class _FusedAdam(torch.autograd.Function):
    """All tensors of an Adam step in one autograd node, as a multi-tensor fused kernel is."""

    @staticmethod
    def forward(ctx, count, n, *tensors):
        ctx.count, ctx.n = count, n
        ctx.save_for_backward(*tensors)
        updates, mus, nus = _adam_math(tensors[:n], tensors[n : 2 * n], tensors[2 * n :], count)
        return (*updates, *mus, *nus)

    @staticmethod
    def backward(ctx, *grad_outputs):
        n = ctx.n
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
            g, m, v = inputs[:n], inputs[n : 2 * n], inputs[2 * n :]
            updates, mus, nus = _adam_math(g, m, v, ctx.count)
            grads = torch.autograd.grad(
                [*updates, *mus, *nus],
                inputs,
                grad_outputs,
                allow_unused=True,
                create_graph=torch.is_grad_enabled(),
            )
        return (None, None, *grads)


def _op_by_op_adam() -> GradientTransformation:
    """Adam recorded op by op (core's own Adam is one custom node, like a fused kernel)."""

    def init(params):
        return _FusedState(
            0,
            tuple(torch.zeros_like(p) for p in params),
            tuple(torch.zeros_like(p) for p in params),
        )

    def update(grads, state, *, params=None, inplace=True):
        count = state.count + 1
        updates, mus, nus = _adam_math(grads, state.mu, state.nu, count)
        return tuple(updates), _FusedState(count, tuple(mus), tuple(nus))

    return GradientTransformation(init, update)


class _FusedState(NamedTuple):
    count: int
    mu: tuple
    nu: tuple


def _fused_adam() -> GradientTransformation:
    def init(params):
        return _FusedState(
            0,
            tuple(torch.zeros_like(p) for p in params),
            tuple(torch.zeros_like(p) for p in params),
        )

    def update(grads, state, *, params=None, inplace=True):
        n, count = len(grads), state.count + 1
        out = _FusedAdam.apply(count, n, *grads, *state.mu, *state.nu)
        return tuple(out[:n]), _FusedState(count, tuple(out[n : 2 * n]), tuple(out[2 * n :]))

    return GradientTransformation(init, update)


def test_fused_op_is_one_node_and_shrinks_the_graph(dot_program, parse):
    fused_net, fused_meta, fused_loss, fused_states = _unroll(
        lambda net: torchopt.MetaOptimizer(net, _fused_adam())
    )
    ref_net, ref_meta, ref_loss, ref_states = _unroll(
        lambda net: torchopt.MetaOptimizer(net, _op_by_op_adam())
    )
    # the fused op computes the same unroll, values and meta-gradient
    torch.testing.assert_close(fused_loss, ref_loss, rtol=1e-12, atol=1e-12)
    (g_fused,) = torch.autograd.grad(fused_loss, fused_meta, retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref_loss, ref_meta, retain_graph=True)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-9, atol=1e-12)

    fused_dot = make_dot(fused_loss, [*fused_states, {'meta_param': fused_meta}])
    ref_dot = make_dot(ref_loss, [*ref_states, {'meta_param': ref_meta}])
    fused_nodes, _ = parse(fused_dot)
    assert sum(n.label == '_FusedAdamBackward' for n in fused_nodes.values()) == 2  # one per step
    fused_svg, ref_svg = _svg(fused_dot), _svg(ref_dot)
    # fewer nodes; the tensors a custom Function saves are drawn too (orange, as upstream)
    assert _svg_node_count(fused_svg) - fused_svg.count('fill="orange"') < _svg_node_count(ref_svg)
    assert 'fill="orange"' not in ref_svg
    for svg in (fused_svg, ref_svg):
        assert 'meta_param' in svg and all(f'step0.{k}' in svg for k in PARAM_NAMES)


@pytest.mark.skipif(
    not torchopt.accelerated_op_available('cpu'), reason='torchopt-accel has no CPU kernels here'
)
def test_accelerated_adam_shrinks_the_graph(dot_program):
    _, meta_a, loss_a, states_a = _unroll(
        lambda net: torchopt.MetaAdam(net, lr=LR, use_accelerated_op=True)
    )
    _, meta_r, loss_r, states_r = _unroll(
        lambda net: torchopt.MetaAdam(net, lr=LR, use_accelerated_op=False)
    )
    torch.testing.assert_close(loss_a, loss_r, rtol=1e-10, atol=1e-12)
    svg_a = _svg(make_dot(loss_a, [*states_a, {'meta_param': meta_a}]))
    svg_r = _svg(make_dot(loss_r, [*states_r, {'meta_param': meta_r}]))
    assert _svg_node_count(svg_a) - svg_a.count('fill="orange"') < _svg_node_count(svg_r)
    assert 'meta_param' in svg_a and all(f'step0.{k}' in svg_a for k in PARAM_NAMES)


# ------------------------------------------------------------------ files and missing dot


def test_save_graph_writes_svg_and_png(dot_program, tmp_path):
    w = torch.randn(3, requires_grad=True)
    dot = make_dot((w * 2).sum(), {'weight_w': w})
    paths = save_graph(dot, tmp_path / 'sub' / 'graph')
    assert paths == [tmp_path / 'sub' / 'graph.svg', tmp_path / 'sub' / 'graph.png']
    assert 'weight_w' in paths[0].read_text(encoding='utf-8')
    assert paths[1].read_bytes().startswith(b'\x89PNG')
    assert (tmp_path / 'sub' / 'graph.gv').read_text(encoding='utf-8') == dot.source


@pytest.mark.parametrize(
    ('kwargs', 'error', 'match'),
    [
        ({'formats': 'svg'}, TypeError, r'`formats` must be a sequence'),
        ({'formats': ()}, ValueError, r'`formats` must name at least one'),
        ({'formats': ('svg', 'nope')}, ValueError, r"unknown to Graphviz: \['nope'\]"),
    ],
)
def test_save_graph_bad_arguments(tmp_path, kwargs, error, match):
    dot = make_dot(torch.ones(1, requires_grad=True) * 2)
    with pytest.raises(error, match=match):
        save_graph(dot, tmp_path / 'g', **kwargs)
    with pytest.raises(TypeError, match=r'`dot` must be a graphviz.Digraph'):
        save_graph('digraph {}', tmp_path / 'g')


@pytest.mark.parametrize('how', ['pipe', 'render', 'save_graph', 'repr_svg'])
def test_missing_dot_names_the_system_package(tmp_path, monkeypatch, how):
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    dot = make_dot(torch.ones(2, requires_grad=True).sum())
    with pytest.raises(GraphvizNotFoundError) as info:
        if how == 'pipe':
            dot.pipe(format='svg')
        elif how == 'render':
            dot.render(tmp_path / 'g', format='png')
        elif how == 'save_graph':
            save_graph(dot, tmp_path / 'g')
        else:
            dot._repr_image_svg_xml()
    assert isinstance(info.value, graphviz.ExecutableNotFound)  # upstream handlers still work
    message = str(info.value)
    assert 'Graphviz `dot` program' in message
    assert 'system package `graphviz`' in message
    assert 'apt-get install graphviz' in message
