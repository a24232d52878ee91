"""Partitioners and reducers checked against direct tensor references (no RPC needed)."""

from __future__ import annotations

import pickle

import pytest
import torch

from torchopt_distributed import api
from torchopt_distributed.api import TensorDimensionPartitioner, dim_partitioner


def _pieces(parts, position=0):
    return [args[position] for _, args, _ in parts]


def test_own_defaults_work():
    """Upstream raised with the constructor's own defaults; here they split contiguously."""
    part = TensorDimensionPartitioner(0)
    assert (part.exclusive, part.keepdim) == (False, True)
    x = torch.arange(6.0)
    parts = TensorDimensionPartitioner(0, workers=[0, 1])(x)
    torch.testing.assert_close(torch.cat(_pieces(parts)), x, rtol=0, atol=0)
    assert TensorDimensionPartitioner(0, exclusive=True).keepdim is False  # upstream's pairing


def test_keepdim_false_needs_exclusive():
    with pytest.raises(ValueError, match='keepdim=False should be used with exclusive=True.'):
        TensorDimensionPartitioner(0, keepdim=False)


@pytest.mark.parametrize('size', [1, 2, 5, 7, 12])
@pytest.mark.parametrize('workers', [1, 2, 3, 4])
def test_chunks_cover_the_batch_in_order(size, workers):
    x = torch.randn(size, 3, dtype=torch.float64)
    parts = dim_partitioner(workers=list(range(workers)))(x, scale=2.0)
    num = min(size, workers)
    assert len(parts) == num
    chunk = size // num
    expected_sizes = [chunk] * (num - 1) + [size - chunk * (num - 1)]
    assert [p.shape[0] for p in _pieces(parts)] == expected_sizes
    torch.testing.assert_close(torch.cat(_pieces(parts)), x, rtol=0, atol=0)
    assert [worker for worker, _, _ in parts] == list(range(num))
    assert all(kwargs == {'scale': 2.0} for _, _, kwargs in parts)


@pytest.mark.parametrize('keepdim', [True, False])
def test_exclusive_one_partition_per_index_round_robin(keepdim):
    x = torch.randn(4, 5, dtype=torch.float64)
    parts = dim_partitioner(dim=1, exclusive=True, keepdim=keepdim, workers=[2, 0])(x)
    assert [w for w, _, _ in parts] == [2, 0, 2, 0, 2]
    for i, piece in enumerate(_pieces(parts)):
        expected = x[:, i : i + 1] if keepdim else x[:, i]
        assert piece.shape == expected.shape
        torch.testing.assert_close(piece, expected, rtol=0, atol=0)


def test_negative_dim_and_nested_arguments():
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    y = torch.randn(6, dtype=torch.float64)
    parts = dim_partitioner(dim=-1, workers=[0, 1, 2])((x, {'y': y}), 'tag', z=[y])
    assert len(parts) == 3
    xs = torch.cat([args[0][0] for _, args, _ in parts], dim=-1)
    ys = torch.cat([args[0][1]['y'] for _, args, _ in parts])
    zs = torch.cat([kwargs['z'][0] for _, _, kwargs in parts])
    torch.testing.assert_close(xs, x, rtol=0, atol=0)
    torch.testing.assert_close(ys, y, rtol=0, atol=0)
    torch.testing.assert_close(zs, y, rtol=0, atol=0)
    assert all(args[1] == 'tag' for _, args, _ in parts)


def test_mismatched_sizes_are_rejected():
    with pytest.raises(ValueError, match=r'same size along dim=0.*\[3, 4\]'):
        dim_partitioner(workers=[0])(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match='along dim=2'):
        dim_partitioner(dim=2, workers=[0])(torch.zeros(3, 4))


def test_broadcast_arguments_are_sent_whole():
    x, w, b = torch.randn(5, 3), torch.randn(3, 2), torch.randn(2)
    parts = dim_partitioner(workers=[0, 1], broadcast=(1, 'b'))(x, w, b=b)
    assert len(parts) == 2
    for _, args, kwargs in parts:
        assert args[1] is w and kwargs['b'] is b
    torch.testing.assert_close(torch.cat(_pieces(parts)), x, rtol=0, atol=0)
    neg = dim_partitioner(workers=[0], broadcast=(-1,))(x, w)
    assert neg[0][1][1] is w
    with pytest.raises(TypeError, match='broadcast'):
        dim_partitioner(broadcast=(1.5,))


def test_no_tensor_means_one_local_call():
    assert dim_partitioner(workers=[3, 4])(1, k='v') == [(0, (1,), {'k': 'v'})]


def test_partitioner_pickles_and_reprs():
    part = dim_partitioner(dim=1, exclusive=True, keepdim=False, workers=['a', 2], broadcast=(0,))
    clone = pickle.loads(pickle.dumps(part))
    assert isinstance(clone, TensorDimensionPartitioner)
    assert vars(clone) == vars(part)
    assert 'dim=1' in repr(part) and 'exclusive=True' in repr(part)


def test_module_level_partitioners():
    assert (api.batch_partitioner.dim, api.batch_partitioner.exclusive) == (0, False)
    assert api.batch_partitioner.keepdim is True
    assert api.exclusive_batch_partitioner.exclusive is True
    assert api.exclusive_batch_partitioner.keepdim is True


@pytest.mark.parametrize(
    'bad', [{'dim': 1.0}, {'dim': 0, 'workers': []}, {'dim': 0, 'workers': [None]}]
)
def test_constructor_validates(bad):
    with pytest.raises((TypeError, ValueError)):
        TensorDimensionPartitioner(**bad)


def test_reducers_against_closed_forms():
    results = [torch.randn(3, 2, dtype=torch.float64) for _ in range(4)]
    total = results[0] + results[1] + results[2] + results[3]
    torch.testing.assert_close(api.sum_reducer(results), total, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(api.mean_reducer(results), total / 4, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(api.sum_reducer(iter(results)), total, rtol=1e-15, atol=1e-15)
    for reducer in (api.sum_reducer, api.mean_reducer):
        with pytest.raises(ValueError, match='at least one result'):
            reducer([])


def test_remote_call_validates_before_sending():
    with pytest.raises(TypeError, match='func must be callable'):
        api.remote_async_call(3)
    with pytest.raises(TypeError, match='partitioner must be'):
        api.remote_async_call(abs, partitioner=1.5)
    with pytest.raises(TypeError, match='reducer must be callable'):
        api.remote_async_call(abs, reducer=1)
    with pytest.raises(TypeError, match='triples'):
        api.remote_async_call(abs, args=(1,), partitioner=lambda *a, **k: [(0, a)])
    with pytest.raises(ValueError, match='no partition'):
        api.remote_async_call(abs, partitioner=lambda *a, **k: [])


def test_parallelize_needs_module_level_function():
    def local(x):
        return x

    with pytest.raises(ValueError, match='module-level function'):
        api.parallelize()(local)


def square_for_parallelize(x):
    return x * x


def test_parallelize_publishes_the_unwrapped_function():
    import sys

    wrapped = api.parallelize(partitioner=0)(square_for_parallelize)
    module = sys.modules[__name__]
    unwrapped = module.square_for_parallelize__parallelize_unwrapped__
    assert wrapped.__wrapped__ is unwrapped
    assert unwrapped.__qualname__ == 'square_for_parallelize__parallelize_unwrapped__'
    assert pickle.loads(pickle.dumps(unwrapped)) is unwrapped  # picklable by reference
    assert unwrapped(3) == 9
