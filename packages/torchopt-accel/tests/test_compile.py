"""``torch.compile(fullgraph=True)`` of an in-place fused step (fake kernels + functionalization)."""

import torch

import torchopt_accel


def test_compiled_in_place_step_matches_eager():
    torch._dynamo.reset()

    def step(g, m, v):
        torchopt_accel.adam_step_(g, m, v, 0.9, 0.999, 1e-8, 0.0, 2)
        return g[0].sum()

    compiled = torch.compile(step, fullgraph=True, backend='aot_eager')

    def make():
        return (
            [torch.randn(5, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)],
            [torch.randn(5, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)],
            [torch.rand(5, dtype=torch.float64), torch.rand(3, 2, dtype=torch.float64)],
        )

    torch.manual_seed(0)
    eager_args = make()
    torch.manual_seed(0)
    comp_args = make()
    step(*eager_args)
    compiled(*comp_args)
    for a, b in zip(sum(comp_args, []), sum(eager_args, [])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
