"""The upstream module paths resolve to this plugin's objects."""

import subprocess
import sys

import torchopt_implicit


def test_upstream_paths_resolve() -> None:
    import torchopt
    import torchopt.diff.implicit
    from torchopt.linalg import cg

    assert torchopt.diff.implicit is torchopt_implicit
    assert torchopt.diff.implicit.custom_root is torchopt_implicit.custom_root
    assert torchopt.linear_solve.solve_cg is torchopt_implicit.linear_solve.solve_cg
    assert cg is torchopt_implicit.linalg.cg
    assert torchopt.nn.ImplicitMetaGradientModule is torchopt_implicit.ImplicitMetaGradientModule
    assert torchopt.diff.ImplicitMetaGradientModule is torchopt_implicit.ImplicitMetaGradientModule


def test_submodule_paths_import() -> None:
    import torchopt.diff.implicit.decorator as dec
    import torchopt.diff.implicit.nn as nn_mod
    import torchopt.diff.implicit.nn.module as module_mod
    import torchopt.linalg.utils as linalg_utils
    import torchopt.linear_solve.utils as ls_utils

    assert dec.custom_root is torchopt_implicit.custom_root
    assert nn_mod.ImplicitMetaGradientModule is torchopt_implicit.ImplicitMetaGradientModule
    assert callable(module_mod.enable_implicit_gradients)
    assert callable(module_mod.make_optimality_from_objective)
    assert callable(linalg_utils.normalize_matvec) and callable(linalg_utils.cat_shapes)
    for name in ('make_rmatvec', 'make_normal_matvec', 'make_ridge_matvec', 'materialize_matvec'):
        assert callable(getattr(ls_utils, name))


def test_upstream_per_solver_modules() -> None:
    """TorchOpt 0.7 defines each solver in a module of its own; those paths still import."""
    from torchopt.linear_solve.cg import solve_cg
    from torchopt.linear_solve.inv import solve_inv
    from torchopt.linear_solve.normal_cg import solve_normal_cg

    assert solve_cg is torchopt_implicit.linear_solve.solve_cg
    assert solve_inv is torchopt_implicit.linear_solve.solve_inv
    assert solve_normal_cg is torchopt_implicit.linear_solve.solve_normal_cg


def test_public_names() -> None:
    import torchopt.linalg
    import torchopt.linear_solve

    assert {'ImplicitMetaGradientModule', 'custom_root'} <= set(torchopt_implicit.__all__)
    assert {'solve_cg', 'solve_inv', 'solve_normal_cg'} <= set(torchopt.linear_solve.__all__)
    assert {'cg', 'ns', 'ns_inv'} <= set(torchopt.linalg.__all__)
    for mod in (torchopt_implicit, torchopt.linear_solve, torchopt.linalg):
        for name in mod.__all__:
            assert hasattr(mod, name), (mod, name)


def test_no_functorch_import() -> None:
    code = (
        'import sys, torchopt_implicit; assert "functorch" not in sys.modules, "functorch imported"'
    )
    subprocess.run([sys.executable, '-W', 'error', '-c', code], check=True, timeout=120)
