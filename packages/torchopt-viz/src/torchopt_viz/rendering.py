"""Rendering through the Graphviz ``dot`` program, with a clear error when it is missing.

The ``graphviz`` Python package only writes DOT source; turning it into SVG or PNG runs the
``dot`` program of the Graphviz system package. :class:`Digraph` is the ``graphviz.Digraph``
returned by :func:`~torchopt_viz.make_dot`: it behaves exactly like its base class, except that
a missing ``dot`` raises :class:`GraphvizNotFoundError`, which says which system package to
install (it subclasses ``graphviz.ExecutableNotFound``, so existing handlers keep working).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import graphviz

__all__ = ['Digraph', 'GraphvizNotFoundError', 'dot_executable', 'save_graph']

_INSTALL_HINT = (
    'Rendering a graph needs the Graphviz `dot` program, which was not found on PATH. '
    'The Python package `graphviz` does not include it: install the system package `graphviz` '
    '(Debian/Ubuntu: `apt-get install graphviz`; Fedora: `dnf install graphviz`; '
    'macOS: `brew install graphviz`; conda: `conda install -c conda-forge graphviz`).'
)


class GraphvizNotFoundError(graphviz.ExecutableNotFound):
    """The Graphviz ``dot`` program is not installed (or not on ``PATH``)."""

    def __init__(self, detail: str = '') -> None:
        RuntimeError.__init__(self, _INSTALL_HINT + (f' ({detail})' if detail else ''))


def dot_executable() -> str | None:
    """The path of the Graphviz ``dot`` program found on ``PATH``, or ``None``."""
    return shutil.which('dot')


@contextlib.contextmanager
def _dot_errors() -> Iterator[None]:
    """Turn graphviz's ``ExecutableNotFound`` into :class:`GraphvizNotFoundError`."""
    try:
        yield
    except GraphvizNotFoundError:
        raise
    except graphviz.ExecutableNotFound as ex:
        raise GraphvizNotFoundError(str(ex)) from ex


class Digraph(graphviz.Digraph):
    """A ``graphviz.Digraph`` whose rendering names the system package when ``dot`` is missing.

    ``pipe``, ``render`` (and so ``view`` and the Jupyter display) and ``unflatten`` behave as
    in ``graphviz``, except for the error they raise when the Graphviz programs are missing.
    """

    def pipe(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 (graphviz documents it)
        with _dot_errors():
            return super().pipe(*args, **kwargs)

    def render(self, *args: Any, **kwargs: Any) -> str:  # noqa: D102 (graphviz documents it)
        with _dot_errors():
            return super().render(*args, **kwargs)

    def unflatten(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 (graphviz documents it)
        with _dot_errors():
            return super().unflatten(*args, **kwargs)


_PathLike = Union[str, 'os.PathLike[str]']


def save_graph(
    dot: graphviz.Digraph,
    path: _PathLike,
    formats: Sequence[str] = ('svg', 'png'),
) -> list[Path]:
    """Render ``dot`` once per format beside its DOT source.

    Args:
        dot: the graph, e.g. from :func:`~torchopt_viz.make_dot`.
        path: the output path without extension; ``path.gv`` holds the DOT source and
            ``path.<format>`` each rendering. Parent directories are created.
        formats: Graphviz output formats, e.g. ``('svg', 'png')``.

    Returns:
        The paths of the rendered files, in the order of ``formats``.

    Raises:
        TypeError: ``dot`` is not a ``graphviz`` graph or ``formats`` is a bare string.
        ValueError: ``formats`` is empty or names a format Graphviz does not know.
        GraphvizNotFoundError: the ``dot`` program is missing.
    """
    if not isinstance(dot, (graphviz.Digraph, graphviz.Graph)):
        raise TypeError(f'`dot` must be a graphviz.Digraph, got {type(dot).__name__}')
    if isinstance(formats, str):
        raise TypeError(
            f"`formats` must be a sequence of format names such as ('svg',), got {formats!r}"
        )
    formats = list(formats)
    if not formats:
        raise ValueError('`formats` must name at least one output format')
    unknown = [f for f in formats if f not in graphviz.FORMATS]
    if unknown:
        raise ValueError(f'`formats` has formats unknown to Graphviz: {unknown}')
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    source = target.with_name(target.name + '.gv')
    source.write_text(dot.source, encoding='utf-8')
    outputs = []
    for fmt in formats:
        with _dot_errors():
            out = graphviz.render('dot', fmt, str(source))
        final = target.with_name(f'{target.name}.{fmt}')
        os.replace(out, final)
        outputs.append(final)
    return outputs
