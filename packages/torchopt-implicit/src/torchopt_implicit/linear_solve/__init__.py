"""Linear solvers for implicit differentiation (served as ``torchopt.linear_solve``).

Each ``solve_*`` is a factory returning ``solver(matvec, b) -> x``:
:func:`solve_cg`, :func:`solve_normal_cg` (the default of
:func:`~torchopt_implicit.custom_root`), :func:`solve_inv` (as upstream), and
:func:`solve_gmres`, :func:`solve_bicgstab` for non-symmetric systems.
"""

from torchopt_implicit.linear_solve import utils
from torchopt_implicit.linear_solve.solvers import (
    solve_bicgstab,
    solve_cg,
    solve_gmres,
    solve_inv,
    solve_normal_cg,
)

__all__ = ['solve_cg', 'solve_inv', 'solve_normal_cg', 'solve_gmres', 'solve_bicgstab']
