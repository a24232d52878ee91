"""CUDA kernels (skipped without a GPU or without CUDA kernels in this build)."""

import pytest
import torch

import torchopt
import torchopt_accel

pytestmark = pytest.mark.cuda
OPS = torch.ops.torchopt_accel
HYPER = (0.9, 0.999, 1e-8, 1e-6, 3)
SIZES = [0, 1, 1023, 1024, 1025, 1026, 1027, 2049, 2050, 2051, 4097, (1 << 20) + 3]


def _state(sizes, dtype, device):
    g = [torch.randn(n, dtype=dtype, device=device) for n in sizes]
    m = [torch.randn(n, dtype=dtype, device=device) for n in sizes]
    v = [torch.rand(n, dtype=dtype, device=device) for n in sizes]
    return g, m, v


def test_every_element_of_every_size_matches_cpu_fp64():
    g, m, v = _state(SIZES, torch.float64, 'cuda')
    cpu = [[t.cpu() for t in ts] for ts in (g, m, v)]
    OPS.adam_step_(g, m, v, *HYPER)
    OPS.adam_step_(*cpu, *HYPER)
    for a, b in zip(g + m + v, sum(cpu, [])):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_reduced_and_single_precision_match_cpu(dtype):
    g, m, v = _state([1, 1025, 70001], dtype, 'cuda')
    cpu = [[t.cpu() for t in ts] for ts in (g, m, v)]
    OPS.adam_step_(g, m, v, *HYPER)
    OPS.adam_step_(*cpu, *HYPER)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    for a, b in zip(g + m + v, sum(cpu, [])):
        torch.testing.assert_close(a.cpu().float(), b.float(), rtol=tol, atol=tol)


def test_forward_and_backward_match_cpu():
    g, m, v = _state([7, 1025], torch.float64, 'cuda')
    cot = [torch.randn_like(t) for t in g + g + g]
    gc, mc, vc = ([t.cpu() for t in ts] for ts in (g, m, v))
    for dev_args, cpu_args in (((g, m, v), (gc, mc, vc)),):
        out_d = OPS.adam_forward(*dev_args, *HYPER)
        out_c = OPS.adam_forward(*cpu_args, *HYPER)
        for a, b in zip(sum(map(list, out_d), []), sum(map(list, out_c), [])):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-14)
    bd = OPS.adam_backward(cot[:2], cot[2:4], cot[4:], g, m, v, *HYPER)
    bc = OPS.adam_backward(
        [c.cpu() for c in cot[:2]],
        [c.cpu() for c in cot[2:4]],
        [c.cpu() for c in cot[4:]],
        gc,
        mc,
        vc,
        *HYPER,
    )
    for a, b in zip(sum(map(list, bd), []), sum(map(list, bc), [])):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-14)


def test_opcheck_on_cuda():
    g, m, v = _state([5, 1025], torch.float64, 'cuda')
    torch.library.opcheck(OPS.adam_step_.default, (g, m, v, *HYPER))
    torch.library.opcheck(
        OPS.adam_forward.default,
        ([t.requires_grad_() for t in g], m, v, *HYPER),
    )


def test_non_contiguous_on_cuda():
    g = torch.randn(64, 33, dtype=torch.float64, device='cuda').t()
    m = torch.randn(33, 64, dtype=torch.float64, device='cuda')
    v = torch.rand(64, 66, dtype=torch.float64, device='cuda')[:, ::2].t()
    gc, mc, vc = g.cpu(), m.cpu(), v.cpu()
    OPS.adam_step_([g], [m], [v], *HYPER)
    OPS.adam_step_([gc], [mc], [vc], *HYPER)
    for a, b in zip((g, m, v), (gc, mc, vc)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-14)


def test_runs_on_the_current_stream():
    g, m, v = _state([1 << 20], torch.float32, 'cuda')
    ref = [[t.clone() for t in ts] for ts in (g, m, v)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        OPS.adam_step_(g, m, v, *HYPER)
        # Ordered after the kernel on the same stream, no explicit synchronisation needed.
        snapshot = [t.clone() for t in g]
    torch.cuda.current_stream().wait_stream(side)
    OPS.adam_step_(*ref, *HYPER)
    torch.testing.assert_close(snapshot[0], ref[0][0])


def test_accelerated_optimizer_on_cuda_matches_torch_optim():
    model = torch.nn.Linear(33, 17).double().cuda()
    ref = torch.nn.Linear(33, 17).double().cuda()
    ref.load_state_dict(model.state_dict())
    ours = torchopt.Adam(model.parameters(), lr=1e-2, use_accelerated_op=True)
    theirs = torch.optim.Adam(ref.parameters(), lr=1e-2)
    x = torch.randn(8, 33, dtype=torch.float64, device='cuda')
    for _ in range(4):
        for opt, net in ((ours, model), (theirs, ref)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
    assert torchopt.accelerated_op_available('cuda')
    assert torchopt.accelerated_op_available(0)
    assert torchopt_accel.build_info()['cuda_device_available']
