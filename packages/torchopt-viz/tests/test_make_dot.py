"""Graph structure, labels and options of ``make_dot`` / ``resize_graph`` (no rendering)."""

from __future__ import annotations

from collections import Counter

import graphviz
import pytest
import torch
from torch import nn

import torchopt
from torchopt_viz import make_dot, resize_graph

OUTPUT, VIEW_BASE, PARAM, SAVED = 'darkolivegreen1', 'darkolivegreen3', 'lightblue', 'orange'


def _by_label(nodes):
    return {n.label: n for n in nodes.values()}


def test_closed_form_graph(parse):
    """``(w * x).sum()``: exactly the five nodes and four edges drawn by hand."""
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, dtype=torch.float64)
    y = (w * x).sum()
    nodes, edges = parse(make_dot(y, {'w': w}))
    assert sorted(n.label for n in nodes.values()) == sorted(
        ['\n()', 'SumBackward0', 'MulBackward0', 'AccumulateGrad', 'w\n(3)']
    )
    labels = _by_label(nodes)
    assert labels['\n()'].color == OUTPUT
    assert labels['w\n(3)'].color == PARAM
    assert labels['MulBackward0'].color is None
    key = {label: n.key for label, n in labels.items()}
    assert edges == Counter(
        {
            (key['w\n(3)'], key['AccumulateGrad']): 1,
            (key['AccumulateGrad'], key['MulBackward0']): 1,
            (key['MulBackward0'], key['SumBackward0']): 1,
            (key['SumBackward0'], key['\n()']): 1,
        }
    )


def _unrolled(steps=2):
    """A MetaAdam unroll; ``names`` maps each step's name of a parameter to its tensor, and
    ``states`` are the ``extract_state_dict(..., enable_visual=True)`` of every step."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    meta = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    opt = torchopt.MetaAdam(net, lr=0.1)
    x = torch.randn(5, 3, dtype=torch.float64)
    names, states = [], []
    for step in range(steps + 1):
        names.append({f'step{step}.{k}': p for k, p in net.named_parameters()})
        states.append(
            torchopt.extract_state_dict(net, enable_visual=True, visual_prefix=f'step{step}.')
        )
        if step < steps:
            opt.step(((net(x) * meta) ** 2).mean())
    return net, meta, x, names, states


def test_matches_reference_walk(parse, reachable):
    """Every autograd node and edge of a MetaAdam unroll, each drawn once, leaves included."""
    net, meta, x, names, states = _unrolled()
    out = net(x).sum()
    fns = reachable(out)  # held: ids stay valid while comparing
    nodes, edges = parse(make_dot(out))
    # Tensors saved by custom autograd Functions (core's Adam step is one) are drawn orange;
    # their objects are unpacked anew at each access, so compare them by count.
    saved = {k for k, n in nodes.items() if n.color == 'orange'}
    assert len(saved) == sum(len(fn.saved_tensors) for fn in fns if hasattr(fn, 'saved_tensors'))
    nodes = {k: n for k, n in nodes.items() if k not in saved}
    edges = Counter({e: c for e, c in edges.items() if not set(e) & saved})
    leaves = [fn.variable for fn in fns if hasattr(fn, 'variable')]
    # the initial parameters and the meta-parameter (and any moments that require grad)
    assert {id(t) for t in [*names[0].values(), meta]} <= {id(t) for t in leaves}
    expected_keys = {str(id(f)) for f in fns} | {str(id(v)) for v in leaves} | {str(id(out))}
    assert set(nodes) == expected_keys
    expected_edges = Counter(
        (str(id(u)), str(id(fn))) for fn in fns for u, _ in fn.next_functions if u is not None
    )
    expected_edges.update(
        (str(id(v)), str(id(fn))) for fn in fns if hasattr(fn, 'variable') for v in [fn.variable]
    )
    expected_edges[str(id(out.grad_fn)), str(id(out))] += 1
    assert edges == expected_edges
    assert all(nodes[str(id(v))].color == PARAM for v in leaves)


def test_updated_parameters_named_per_step(parse):
    """``visual_contents`` names the node that produced each updated (non-leaf) parameter."""
    net, meta, x, names, states = _unrolled()
    out = net(x).sum()
    params = [*states, {'meta': meta}]
    nodes, _ = parse(make_dot(out, params))
    text = '\n'.join(n.label for n in nodes.values())
    for step_names in names:
        for name, p in step_names.items():
            shape = '(' + ', '.join(map(str, p.shape)) + ')'
            assert f'{name}\n{shape}' in text
    assert 'meta\n()' in text
    for step in (1, 2):
        # each updated parameter labels the node that produced it, in light blue
        for k in ('0.weight', '0.bias', '2.weight', '2.bias'):
            (node,) = [n for n in nodes.values() if f'step{step}.{k}\n' in n.label]
            assert node.color == PARAM


def test_pytree_outputs_share_subgraph(parse):
    w = torch.randn(2, 2, requires_grad=True)
    h = w.tanh()
    outs = {'a': h.sum(), 'b': [h.mean(), (h * 2).max()]}
    nodes, _ = parse(make_dot(outs, {'w': w}))
    labels = [n.label for n in nodes.values()]
    assert labels.count('TanhBackward0') == 1
    assert sum(n.color == OUTPUT for n in nodes.values()) == 3


def test_view_base_is_dark_green_with_dotted_edge(parse):
    w = torch.randn(4, requires_grad=True)
    y = w * 2
    v = y[:2]
    dot = make_dot(v)
    nodes, edges = parse(dot)
    assert nodes[str(id(v))].color == OUTPUT
    assert nodes[str(id(y))].color == VIEW_BASE
    assert f'\t{id(y)} -> {id(v)} [style=dotted]\n' in dot.body
    assert edges[str(id(y)), str(id(v))] == 1


def _net_and_out():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    return net, net(torch.randn(4, 2)).sum()


def _leaf_labels(nodes):
    return {n.label.split('\n')[0] for n in nodes.values() if n.color == PARAM}


EXPECTED = {'0.weight', '0.bias', '2.weight', '2.bias'}


@pytest.mark.parametrize(
    'make_params',
    [
        pytest.param(lambda net: dict(net.named_parameters()), id='mapping'),
        pytest.param(lambda net: net.named_parameters(), id='generator'),
        pytest.param(lambda net: list(net.named_parameters()), id='list-of-pairs'),
        pytest.param(
            lambda net: torchopt.extract_state_dict(net, enable_visual=True), id='module-state'
        ),
        pytest.param(
            lambda net: torchopt.extract_state_dict(net, enable_visual=True).visual_contents,
            id='visual-contents',
        ),
        pytest.param(
            lambda net: [
                dict(list(net.named_parameters())[:1]),
                (p for p in list(net.named_parameters())[1:2]),
                [list(net.named_parameters())[2]],
                {'2.bias': net[2].bias},
            ],
            id='mixed-iterable',
        ),
    ],
)
def test_every_params_form(parse, make_params):
    net, out = _net_and_out()
    assert _leaf_labels(parse(make_dot(out, make_params(net)))[0]) == EXPECTED
    assert _leaf_labels(parse(make_dot(out))[0]) == {''}  # unnamed without params


def test_module_state_prefix(parse):
    net, out = _net_and_out()
    state = torchopt.extract_state_dict(net, enable_visual=True, visual_prefix='step0.')
    assert _leaf_labels(parse(make_dot(out, state))[0]) == {f'step0.{k}' for k in EXPECTED}


def test_non_leaf_tensor_by_name_names_the_tensor_not_its_grad_fn(parse):
    """As upstream: a mapping names tensors where they are drawn; grad_fn nodes stay plain."""
    w = torch.randn(3, requires_grad=True)
    u = w.exp()
    out = u * 2
    nodes, _ = parse(make_dot(out, {'u': u, 'out': out, 'w': w}))
    (exp,) = [n for n in nodes.values() if n.label.startswith('ExpBackward0')]
    assert exp.label == 'ExpBackward0'
    assert exp.color is None
    assert nodes[str(id(out))].label == 'out\n(3)'
    assert nodes[str(id(w))].label == 'w\n(3)'


def test_named_parameters_of_an_unroll_name_leaves_only(parse):
    """``named_parameters()`` after MetaOptimizer steps names no node (upstream draws them grey)."""
    net, meta, x, names, _ = _unrolled()
    out = net(x).sum()
    nodes, _ = parse(make_dot(out, [*names, {'meta': meta}]))
    labelled = {line for n in nodes.values() for line in n.label.split('\n')}
    assert labelled >= set(names[0]) | {'meta'}
    assert not labelled & (set(names[1]) | set(names[2]))


@pytest.mark.parametrize(
    ('params', 'error', 'match'),
    [
        (3, TypeError, r'`params` must be a mapping'),
        ('w', TypeError, r'`params` must be a mapping'),
        ({'w': 3.0}, TypeError, r"`params\['w'\]`.*must be a tensor"),
        ({1: torch.ones(1)}, TypeError, r'`params` has a key of type int'),
        ([{'w': torch.ones(1)}, 5], TypeError, r'`params\[1\]` must be a mapping'),
        ((p for p in [('w', 'x')]), TypeError, r'`params\[0\]` must be a \(name: str, tensor\)'),
    ],
)
def test_bad_params(params, error, match):
    w = torch.ones(1, requires_grad=True)
    with pytest.raises(error, match=match):
        make_dot(w * 2, params)


def test_module_state_without_visual_contents():
    net, out = _net_and_out()
    state = torchopt.extract_state_dict(net)
    match = r'`params` is a ModuleState without visual_contents.*enable_visual=True'
    with pytest.raises(ValueError, match=match):
        make_dot(out, state)


@pytest.mark.parametrize(
    ('var', 'kwargs', 'error', 'match'),
    [
        ('loss', {}, TypeError, r'`var` must be a tensor or a pytree of tensors'),
        ([torch.ones(1), 2.0], {}, TypeError, r'`var` must be a tensor or a pytree'),
        ([], {}, ValueError, r'`var` must hold at least one tensor'),
        (torch.ones(1), {'max_attr_chars': '9'}, TypeError, r'`max_attr_chars` must be an int'),
    ],
)
def test_bad_arguments(var, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_dot(var, **kwargs)


def test_show_saved_draws_saved_tensors(parse):
    w = torch.randn(3, requires_grad=True)
    v = torch.randn(3, requires_grad=True)
    c = torch.randn(3)
    y = ((w * v) * c).exp().sum()
    params = {'w': w, 'v': v}
    mul_node = y.grad_fn.next_functions[0][0].next_functions[0][0].next_functions[0][0]  # held
    plain, _ = parse(make_dot(y, params))
    assert not [n for n in plain.values() if n.color == SAVED]
    nodes, edges = parse(make_dot(y, params, show_saved=True))
    saved = {n.label for n in nodes.values() if n.color == SAVED}
    assert saved == {'other\n(3)', 'result\n(3)'}  # c saved by the 2nd Mul, the output of Exp
    # w and v are saved by the first Mul too, but stay the named, light-blue parameter nodes
    assert (nodes[str(id(w))].label, nodes[str(id(w))].color) == ('w\n(3)', PARAM)
    assert (nodes[str(id(v))].label, nodes[str(id(v))].color) == ('v\n(3)', PARAM)
    first_mul = str(id(mul_node))
    assert nodes[first_mul].label == 'MulBackward0'
    assert edges[first_mul, str(id(w))] == edges[first_mul, str(id(v))] == 1  # undirected
    assert len(nodes) == len(plain) + 2


def test_show_attrs_prints_and_truncates(parse):
    w = torch.randn(2, 3, 4, requires_grad=True)
    y = w.permute(2, 0, 1).sum()
    plain, _ = parse(make_dot(y))
    assert 'PermuteBackward0' in {n.label for n in plain.values()}
    nodes, _ = parse(make_dot(y, show_attrs=True))
    (permute,) = [n.label for n in nodes.values() if n.label.startswith('PermuteBackward0')]
    rows = permute.split('\n')
    assert rows[1] == '-' * max(len(rows[2]), len('PermuteBackward0'))
    assert rows[2] == 'dims: (2, 0, 1)'
    (short,) = [
        n.label
        for n in parse(make_dot(y, show_attrs=True, max_attr_chars=5))[0].values()
        if n.label.startswith('PermuteBackward0')
    ]
    assert short.split('\n')[2] == 'dims: (2...'
    (minimal,) = [
        n.label
        for n in parse(make_dot(y, show_attrs=True, max_attr_chars=0))[0].values()
        if n.label.startswith('PermuteBackward0')
    ]
    assert minimal.split('\n')[2] == 'dims: ...'  # clamped to 3 characters


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_custom_function_saved_tensors_are_orange(parse):
    w = torch.randn(3, requires_grad=True)
    h = w + 1
    y = _Square.apply(h).sum()
    nodes, edges = parse(make_dot(y))
    fn = next(n for n in nodes.values() if n.label == '_SquareBackward')
    assert nodes[str(id(h))].color == SAVED
    assert edges[str(id(h)), fn.key] == 1


def test_graph_after_backward(parse):
    w = torch.randn(3, requires_grad=True)
    y = (w.exp() * w).sum()
    y.backward()  # frees the saved tensors
    nodes, _ = parse(make_dot(y, show_saved=True, show_attrs=True))
    assert any('[freed]' in n.label for n in nodes.values())
    assert not [n for n in nodes.values() if n.color == SAVED]


def test_deep_graph_has_no_recursion_limit(parse, reachable):
    w = torch.ones(1, requires_grad=True)
    y = w
    for _ in range(3000):
        y = y * 1.0
    fns = reachable(y)
    nodes, _ = parse(make_dot(y))
    assert len(nodes) == len(fns) + 2 == 3003


def test_node_attributes_and_size():
    w = torch.randn(3, requires_grad=True)
    dot = make_dot((w * 2).sum())
    assert isinstance(dot, graphviz.Digraph)
    assert dot.node_attr['style'] == 'filled'
    assert dot.node_attr['shape'] == 'box'
    assert dot.node_attr['fontname'] == 'monospace'
    assert dot.node_attr['fontsize'] == '10'
    assert dot.graph_attr['size'] == '12.0,12.0'  # 8 statements * 0.5 < 12


def test_resize_graph():
    dot = graphviz.Digraph()
    for i in range(30):
        dot.node(str(i))
    resize_graph(dot)
    assert dot.graph_attr['size'] == '15.0,15.0'
    resize_graph(dot, size_per_element=0.1, min_size=4)
    assert dot.graph_attr['size'] == '4,4'
    resize_graph(dot, size_per_element=1.0, min_size=4)
    assert dot.graph_attr['size'] == '30.0,30.0'


@pytest.mark.parametrize(
    ('args', 'error', 'match'),
    [
        (('not a graph',), TypeError, r'`dot` must be a graphviz.Digraph'),
        ((graphviz.Digraph(), -1.0), ValueError, r'`size_per_element` must be non-negative'),
        ((graphviz.Digraph(), 0.5, 0), ValueError, r'`min_size` must be positive'),
        ((graphviz.Digraph(), '0.5'), TypeError, r'`size_per_element` must be a real number'),
    ],
)
def test_resize_graph_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        resize_graph(*args)


def test_module_state_of_updated_parameters(parse):
    """``visual_contents`` of a stepped module: every updated parameter labels its node."""
    net, meta, x, names, _ = _unrolled(steps=1)
    state = torchopt.extract_state_dict(net, enable_visual=True, visual_prefix='step1.')
    out = net(x).sum()
    nodes, _ = parse(make_dot(out, state))
    named = [n for n in nodes.values() if 'step1.' in n.label]
    assert all(n.color == PARAM for n in named)
    assert sorted(n.label.split('\n')[1] for n in named) == sorted(
        f'step1.{k}' for k, _ in net.named_parameters()
    )
    assert all(n.label.split('\n')[0] == 'AddBackward0' for n in named)
    # naming the tensors as well repeats no name
    nodes, _ = parse(make_dot(out, [state, names[1]]))
    for k, p in net.named_parameters():
        (node,) = [n for n in nodes.values() if f'step1.{k}\n' in n.label]
        assert node.label.split('\n')[1:] == [
            f'step1.{k}',
            '(' + ', '.join(map(str, p.shape)) + ')',
        ]
