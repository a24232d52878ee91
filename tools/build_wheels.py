"""Build the six wheels of the monorepo into a wheelhouse (default: ./wheelhouse).

The five pure-Python packages are built with hatchling; torchopt-accel is compiled by
scikit-build-core without build isolation, against the torch installed in this interpreter.

    python tools/build_wheels.py [--out wheelhouse] [--skip-accel]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PURE = ['torchopt-core', 'torchopt-implicit', 'torchopt-zero', 'torchopt-distributed', 'torchopt-viz']


def build(out: Path, skip_accel: bool = False) -> list[Path]:
    """Build the wheels into ``out`` and return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(out)]
    subprocess.run([*pip, *(str(ROOT / 'packages' / p) for p in PURE)], check=True)
    if not skip_accel:
        subprocess.run(
            [*pip, '--no-build-isolation', str(ROOT / 'packages' / 'torchopt-accel')], check=True
        )
    return sorted(out.glob('torchopt_*.whl'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=ROOT / 'wheelhouse')
    parser.add_argument('--skip-accel', action='store_true')
    args = parser.parse_args()
    for wheel in build(args.out, args.skip_accel):
        print(wheel)


if __name__ == '__main__':
    main()
