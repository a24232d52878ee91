"""TorchOpt 0.7 names and module paths beyond the packages' ``__all__`` (found by comparing the
library's surface with upstream's modules): per-object submodules, the RPC pytree helpers,
``torchopt.typing.RRef`` and ``add_param_group``'s keyword."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest
import torch

import torchopt
from torchopt import _upstream_modules


@pytest.mark.parametrize('path', sorted(_upstream_modules.UPSTREAM_SUBMODULES))
def test_upstream_submodule_is_a_view_of_its_package(path):
    module = importlib.import_module(path)
    package = importlib.import_module(path.rpartition('.')[0])
    exported, extra = _upstream_modules.UPSTREAM_SUBMODULES[path]
    assert module.__all__ == list(exported)
    for name in (*exported, *extra):
        assert getattr(module, name) is getattr(package, name), name


def test_package_names_stay_what_upstream_has_after_importing_the_submodules():
    """``torchopt.transform.scale_by_adam`` stays the function; ``torchopt.optim.adam`` is the
    module (upstream's package imports the function over its module, and has no ``adam``
    class). Checked in a fresh interpreter, importing each path first."""
    code = textwrap.dedent("""
        import importlib, types
        from torchopt import _upstream_modules
        for path in _upstream_modules.UPSTREAM_SUBMODULES:
            importlib.import_module(path)
        import torchopt
        assert callable(torchopt.transform.scale_by_adam)
        assert not isinstance(torchopt.transform.trace, types.ModuleType)
        assert not isinstance(torchopt.alias.sgd, types.ModuleType)
        assert not isinstance(torchopt.schedule.exponential_decay, types.ModuleType)
        assert isinstance(torchopt.optim.adam, types.ModuleType)
        assert torchopt.optim.meta.adam.MetaAdam is torchopt.MetaAdam
        from torchopt.transform.scale_by_adam import ScaleByAdamState
        assert ScaleByAdamState is torchopt.transform.ScaleByAdamState
    """)
    subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


def test_rpc_pytree_helpers_and_rref_type():
    """tree_as_rref / tree_to_here / tree_local_value in a one-process RPC world."""
    code = textwrap.dedent("""
        import socket, torch
        import torch.distributed.rpc as rpc
        from torchopt.pytree import tree_as_rref, tree_local_value, tree_to_here
        from torchopt.typing import RRef
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
        opts = rpc.TensorPipeRpcBackendOptions(init_method=f'tcp://127.0.0.1:{port}')
        rpc.init_rpc('w0', rank=0, world_size=1, rpc_backend_options=opts)
        tree = {'a': torch.arange(3.0), 'b': [torch.ones(2), torch.zeros(())]}
        rrefs = tree_as_rref(tree)
        assert isinstance(rrefs['a'], RRef) and isinstance(rrefs['b'][1], RRef)
        here, local = tree_to_here(rrefs), tree_local_value(rrefs)
        assert local['b'][0] is tree['b'][0]
        timed = tree_to_here(rrefs, timeout=30.0)
        for x, y, z in zip((here['a'], *here['b']), (timed['a'], *timed['b']),
                           (tree['a'], *tree['b'])):
            assert torch.equal(x, z) and torch.equal(y, z)
        rpc.shutdown()
        print('ok')
    """)
    env_out = subprocess.run(
        [sys.executable, '-c', code], check=True, timeout=120, capture_output=True, text=True
    )
    assert env_out.stdout.strip().endswith('ok')


def test_pytree_and_typing_names_as_upstream():
    assert {'tree_as_rref', 'tree_to_here'} <= set(torchopt.pytree.__all__)
    assert 'RRef' in torchopt.typing.__all__
    assert torchopt.typing.RRef is torch.distributed.rpc.RRef
    assert torchopt.pytree.acc_add(1, 2, 3) == 6
    assert torchopt.pytree.acc_mul(2, 3, 4) == 24
    a, b = torch.eye(2) * 2, torch.eye(2) * 3
    assert torch.equal(torchopt.pytree.acc_matmul(a, b, a), torch.eye(2) * 12)


def test_add_param_group_takes_upstream_and_torch_keywords():
    a, b, c = (torch.zeros(2, requires_grad=True) for _ in range(3))
    opt = torchopt.SGD([a], lr=0.1)
    opt.add_param_group(params=[b])  # TorchOpt 0.7's parameter name
    opt.add_param_group(param_group={'params': [c], 'lr': 0.5})  # torch.optim's
    assert [g['lr'] for g in opt.param_groups] == [0.1, 0.1, 0.5]
    with pytest.raises(TypeError, match='add_param_group'):
        opt.add_param_group()
    with pytest.raises(TypeError, match='add_param_group'):
        opt.add_param_group([torch.zeros(1)], param_group={'params': [torch.zeros(1)]})
