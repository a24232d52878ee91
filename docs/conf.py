"""Sphinx configuration of the torchopt documentation.

Build (warnings are errors, tutorials executed): ``hatch run docs:build``, or by hand::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

Environment variables:

* ``TORCHOPT_DOCS_EXECUTE``: myst-nb execution mode of the tutorials (default ``force``: every
  build runs them; ``cache`` reuses outputs of unchanged notebooks; ``off`` skips execution).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / '_ext'))

# Tutorials and the API import torch: keep them on the threads the machine can give.
os.environ.setdefault('OMP_NUM_THREADS', '2')

import torchopt  # noqa: E402

project = 'torchopt'
author = 'torchopt contributors'
copyright = 'torchopt contributors'  # noqa: A001
release = torchopt.__version__
version = '.'.join(release.split('.')[:2])

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    # MathJax bundled into the site (_static/mathjax), so math renders without network access.
    'sphinx-mathjax-offline',
    'sphinx.ext.viewcode',
    'myst_nb',
    'apigen',
]

exclude_patterns = ['_build', '_generated', 'README.md', 'jupyter_execute', '**.ipynb_checkpoints']
templates_path: list[str] = []

# -- cross-references: nitpicky for our names; other libraries are not linked (no network) ---
nitpicky = True
_EXTERNAL_MODULES = (
    'torch optree typing typing_extensions collections graphviz numpy abc types concurrent '
    'contextlib enum os pathlib functools builtins copy rpc pickle math warnings inspect '
    'dataclasses threading importlib sys'
).split()
_BARE_TYPES = (
    'Tensor Module nn\\.Module PyTree PyTreeSpec Future Distribution Digraph T TypeVar callable '
    'optional default Callable Any Sequence Iterable Mapping Iterator Generator NamedTuple '
    'Protocol ABCMeta Enum RRef WorkerInfo ParamSpec P R Self'
).split()
nitpick_ignore_regex = [
    (r'py:.*', rf'({"|".join(_EXTERNAL_MODULES)})(\..*)?'),
    # Type names as they appear in signatures and Google-style ``Args`` after napoleon.
    (r'py:.*', rf'({"|".join(_BARE_TYPES)})'),
    (r'py:.*', r'.*\.(T|P|R|TensorTree|_[A-Za-z0-9_]+)'),
]

# -- autodoc ----------------------------------------------------------------------------------
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_typehints_format = 'short'
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False
autodoc_default_options = {'exclude-members': '__init__, __new__'}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_preprocess_types = False
napoleon_attr_annotations = True

# -- MyST and notebooks -----------------------------------------------------------------------
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'deflist']
myst_heading_anchors = 3
nb_execution_mode = os.environ.get('TORCHOPT_DOCS_EXECUTE', 'force')
nb_execution_timeout = 120
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_kernel_rgx_aliases = {'.*': 'python3'}

# -- HTML -------------------------------------------------------------------------------------
html_theme = 'furo'
html_title = f'torchopt {release}'
html_static_path: list[str] = []
suppress_warnings: list[str] = []


def _benchmark_tables() -> str:
    """The benchmark section of the root README (between markers), or a note that it is empty."""
    readme = ROOT / 'README.md'
    text = readme.read_text(encoding='utf-8') if readme.exists() else ''
    match = re.search(
        r'<!-- benchmarks:start -->(.*?)<!-- benchmarks:end -->', text, flags=re.DOTALL
    )
    if match and match.group(1).strip():
        return match.group(1).strip() + '\n'
    return (
        '```{note}\nNo measured tables are published in this version yet: run the scripts listed '
        'above on your machine. (The tables are taken from the section of the repository '
        'README between the markers `<!-- benchmarks:start -->` and '
        '`<!-- benchmarks:end -->`.)\n```\n'
    )


def _write_generated(app: object) -> None:
    out = DOCS / '_generated'
    out.mkdir(exist_ok=True)
    path = out / 'benchmark_tables.md'
    text = _benchmark_tables()
    if not path.exists() or path.read_text(encoding='utf-8') != text:
        path.write_text(text, encoding='utf-8')


def setup(app: object) -> None:
    """Write the generated pages before reading sources."""
    app.connect('builder-inited', _write_generated)  # type: ignore[attr-defined]
