"""Draw the computation graph of a two-step MetaAdam unroll with a meta-parameter.

The network's parameters are named per inner step (``step0.*`` for the initial leaves,
``step1.*`` and ``step2.*`` for the updated, non-leaf parameters) and the meta-parameter by its
name, through ``torchopt.extract_state_dict(..., enable_visual=True)`` and
``torchopt.visual.make_dot``. A plain torchviz-style graph of the same loss (no names) is drawn
beside it for comparison. Each graph is written as DOT source, SVG and PNG::

    python examples/visualize/visualize.py                # into examples/visualize/outputs/
    python examples/visualize/visualize.py --out /tmp/graphs --accelerated

Rendering needs the Graphviz ``dot`` program (Debian/Ubuntu: ``apt-get install graphviz``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import torchopt
import torchopt.visual

__all__ = ['Net', 'unrolled_graphs', 'main']


class Net(nn.Module):
    """A two-layer perceptron whose hidden activations are scaled by a meta-parameter."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, meta_param: torch.Tensor) -> torch.Tensor:
        """``fc2(tanh(fc1(x)) * meta_param)``."""
        return self.fc2(torch.tanh(self.fc1(x)) * meta_param)


def unrolled_graphs(
    dim: int = 8, batch_size: int = 16, accelerated: bool = False
) -> tuple[torchopt.visual.Digraph, torchopt.visual.Digraph]:
    """Unroll two MetaAdam steps and draw the outer loss: (named graph, plain graph)."""
    torch.manual_seed(0)
    net = Net(dim)
    meta_param = torch.tensor(1.0, requires_grad=True)
    optimizer = torchopt.MetaAdam(net, lr=1e-2, use_accelerated_op=accelerated)
    xs, ys = torch.randn(batch_size, dim), torch.randn(batch_size, 1)

    states = []
    for step in range(2):
        states.append(
            torchopt.extract_state_dict(net, enable_visual=True, visual_prefix=f'step{step}.')
        )
        inner_loss = F.mse_loss(net(xs, meta_param), ys)
        optimizer.step(inner_loss)
    states.append(torchopt.extract_state_dict(net, enable_visual=True, visual_prefix='step2.'))

    outer_loss = F.mse_loss(net(xs, meta_param), ys)
    named = torchopt.visual.make_dot(outer_loss, [*states, {'meta_param': meta_param}])
    plain = torchopt.visual.make_dot(outer_loss)
    return named, plain


def main(argv: list[str] | None = None) -> list[Path]:
    """Write ``torchopt_graph.{gv,svg,png}`` and ``torchviz_graph.{gv,svg,png}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--out',
        type=Path,
        default=Path(__file__).resolve().parent / 'outputs',
        help='output directory (default: examples/visualize/outputs)',
    )
    parser.add_argument(
        '--accelerated',
        action='store_true',
        help='use the fused Adam op of torchopt-accel (one graph node per step)',
    )
    args = parser.parse_args(argv)
    named, plain = unrolled_graphs(accelerated=args.accelerated)
    written = []
    for stem, dot in (('torchopt_graph', named), ('torchviz_graph', plain)):
        written += torchopt.visual.save_graph(dot, args.out / stem, formats=('svg', 'png'))
    for path in written:
        print(path)
    return written


if __name__ == '__main__':
    main()
