"""Linear algebra over tensor trees (served as ``torchopt.linalg``).

Upstream's :func:`cg`, :func:`ns` and :func:`ns_inv`, plus :func:`minres` for symmetric
indefinite systems and :func:`gmres` and :func:`bicgstab` for non-symmetric systems. The
iterative solvers flatten the tree once, accept a ``'jacobi'`` preconditioner, warn with the
residual when they stop without converging, and run under :func:`torch.func.vmap`.
"""

from torchopt_implicit.linalg import utils
from torchopt_implicit.linalg.bicgstab import bicgstab
from torchopt_implicit.linalg.cg import cg
from torchopt_implicit.linalg.gmres import gmres
from torchopt_implicit.linalg.minres import minres, minres_with_status
from torchopt_implicit.linalg.ns import ns, ns_inv
from torchopt_implicit.linalg.utils import ConvergenceWarning

__all__ = [
    'cg',
    'ns',
    'ns_inv',
    'minres',
    'minres_with_status',
    'gmres',
    'bicgstab',
    'ConvergenceWarning',
]
