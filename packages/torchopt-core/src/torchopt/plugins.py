"""Plugin registry: discovery, lazy loading and the upstream module paths they serve.

Plugins are separately installed distributions that declare an entry point in the group
``torchopt.plugins``. The entry name is the extra that installs it (``implicit``, ``zero``,
``distributed``, ``viz``, ``accel``); the target is a :class:`PluginInfo` naming the module to
import. Core never imports a plugin by itself: a plugin is loaded on first use, through

* attribute access (``torchopt.visual``, ``torchopt.diff.implicit``, ...),
* ``import torchopt.diff.implicit`` and the other upstream paths (a meta-path finder maps them to
  the plugin's modules), or
* kernel dispatch (``torchopt.accelerated_op``).

``TORCHOPT_DISABLE_PLUGINS=accel,viz`` blocks plugins by name (comma-separated, exact names; a
name that is no plugin, such as ``IMPLICIT``, ``all`` or a typo, blocks nothing and is reported
with a warning). :func:`plugins` (or ``python -m torchopt``) lists what is installed and in which
state. A plugin name declared by two distributions is reported as broken, naming both, rather
than letting one of them win by ``sys.path`` order.

Contract for plugin authors: the entry-point target is a :class:`PluginInfo` built from core's
public API only; ``api_version`` must equal :data:`PLUGIN_API_VERSION`; the named module must be
importable and serve the paths of :data:`UPSTREAM_PATHS` that belong to the plugin.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import threading
import types
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from importlib import metadata

__all__ = [
    'PLUGIN_API_VERSION',
    'PluginInfo',
    'PluginStatus',
    'PluginNotInstalledError',
    'UPSTREAM_PATHS',
    'KNOWN_PLUGINS',
    'load',
    'loaded',
    'plugins',
    'is_available',
]

#: The plugin API version of this core; a plugin's :class:`PluginInfo` must carry the same.
PLUGIN_API_VERSION = 1
ENTRY_POINT_GROUP = 'torchopt.plugins'
DISABLE_ENV = 'TORCHOPT_DISABLE_PLUGINS'

#: The plugins of this project: extra name -> distribution name.
KNOWN_PLUGINS: dict[str, str] = {
    'implicit': 'torchopt-implicit',
    'zero': 'torchopt-zero',
    'distributed': 'torchopt-distributed',
    'viz': 'torchopt-viz',
    'accel': 'torchopt-accel',
}

#: Upstream module paths served by plugins: path -> (plugin name, module to serve).
UPSTREAM_PATHS: dict[str, tuple[str, str]] = {
    'torchopt.diff.implicit': ('implicit', 'torchopt_implicit'),
    'torchopt.diff.implicit.nn': ('implicit', 'torchopt_implicit.nn'),
    'torchopt.diff.implicit.nn.module': ('implicit', 'torchopt_implicit.nn.module'),
    'torchopt.diff.implicit.decorator': ('implicit', 'torchopt_implicit.decorator'),
    'torchopt.linear_solve': ('implicit', 'torchopt_implicit.linear_solve'),
    'torchopt.linear_solve.utils': ('implicit', 'torchopt_implicit.linear_solve.utils'),
    'torchopt.linear_solve.cg': ('implicit', 'torchopt_implicit.linear_solve.solvers'),
    'torchopt.linear_solve.inv': ('implicit', 'torchopt_implicit.linear_solve.solvers'),
    'torchopt.linear_solve.normal_cg': ('implicit', 'torchopt_implicit.linear_solve.solvers'),
    'torchopt.linalg': ('implicit', 'torchopt_implicit.linalg'),
    'torchopt.linalg.utils': ('implicit', 'torchopt_implicit.linalg.utils'),
    'torchopt.diff.zero_order': ('zero', 'torchopt_zero'),
    'torchopt.diff.zero_order.nn': ('zero', 'torchopt_zero.nn'),
    'torchopt.diff.zero_order.nn.module': ('zero', 'torchopt_zero.nn.module'),
    'torchopt.diff.zero_order.decorator': ('zero', 'torchopt_zero.decorator'),
    'torchopt.distributed': ('distributed', 'torchopt_distributed'),
    'torchopt.distributed.api': ('distributed', 'torchopt_distributed.api'),
    'torchopt.distributed.autograd': ('distributed', 'torchopt_distributed.autograd'),
    'torchopt.distributed.world': ('distributed', 'torchopt_distributed.world'),
    'torchopt.visual': ('viz', 'torchopt_viz'),
}


class PluginInfo(NamedTuple):
    """What a plugin's entry point names: the plugin and the module that implements it."""

    name: str
    module: str
    api_version: int = PLUGIN_API_VERSION


class PluginStatus(NamedTuple):
    """One row of :func:`plugins`."""

    name: str
    distribution: str | None
    version: str | None
    status: str  # 'available' | 'loaded' | 'broken' | 'blocked' | 'missing'
    error: str | None = None


class PluginNotInstalledError(ImportError):
    """A feature was used whose plugin is not installed (or is blocked or broken)."""


_lock = threading.RLock()
_loaded: dict[str, types.ModuleType] = {}
_broken: dict[str, str] = {}
_reported_disable: set[str] = set()  # the TORCHOPT_DISABLE_PLUGINS values already warned about


def _disabled() -> set[str]:
    """The plugin names blocked by ``TORCHOPT_DISABLE_PLUGINS`` (warns once about unknown ones)."""
    value = os.environ.get(DISABLE_ENV, '')
    names = {name.strip() for name in value.split(',') if name.strip()}
    if names - set(KNOWN_PLUGINS) and value not in _reported_disable:
        _reported_disable.add(value)
        problem = _disable_problem(names)
        if problem is not None:
            _warn(problem)
    return names


def _disable_problem(names: set[str] | None = None) -> str | None:
    """Why names in ``TORCHOPT_DISABLE_PLUGINS`` block nothing; ``None`` if all name plugins.

    A name blocks a plugin only if it is that plugin's exact (lower-case) name; there is no
    wildcard. The message suggests the name meant where one is close (``IMPLICIT``, typos).

    Args:
        names: the names to check; by default those in the environment variable.
    """
    if names is None:
        value = os.environ.get(DISABLE_ENV, '')
        names = {name.strip() for name in value.split(',') if name.strip()}
    if not names - set(KNOWN_PLUGINS):
        return None
    known = sorted(set(KNOWN_PLUGINS) | set(_entry_points()))  # third-party plugins too
    unknown = names - set(known)
    if not unknown:
        return None
    parts = [f'{name!r}{_suggestion(name, known)}' for name in sorted(unknown)]
    return (
        f'{DISABLE_ENV} names no plugin called {", ".join(parts)}: '
        f'{"it blocks" if len(unknown) == 1 else "they block"} nothing. Plugin names are exact '
        f'and comma-separated, with no wildcard; the plugins are: {", ".join(known)} (block '
        f'them all with {DISABLE_ENV}={",".join(known)}).'
    )


def _suggestion(name: str, known: list[str]) -> str:
    lowered = name.lower()
    if lowered in known:
        return f' (did you mean {lowered!r}?)'
    if lowered in ('all', '*', 'any', 'everything') or re.fullmatch(r'[*?.\s]+', name):
        return ' (not a wildcard)'
    import difflib  # only on this error path

    close = difflib.get_close_matches(lowered, known, n=1, cutoff=0.6)
    return f' (did you mean {close[0]!r}?)' if close else ''


def _warn(message: str) -> None:
    """Warn at the user's line: the first frame outside torchopt and torch."""
    from torchopt.accelerated_op import _user_stacklevel  # the facade is light

    warnings.warn(message, UserWarning, stacklevel=_user_stacklevel())


def _scan() -> tuple[dict[str, metadata.EntryPoint], dict[str, list[metadata.EntryPoint]]]:
    """The entry points of the group by name, and the names declared by several distributions."""
    from importlib import metadata  # imported on first use: it costs ~9 ms at import time

    found: dict[str, metadata.EntryPoint] = {}
    declared: dict[str, dict[str, metadata.EntryPoint]] = {}
    for ep in _group_entry_points(metadata):
        found.setdefault(ep.name, ep)
        dist = getattr(ep, 'dist', None)
        key = _normalize(getattr(dist, 'name', None) or ep.value)
        declared.setdefault(ep.name, {}).setdefault(key, ep)
    conflicts = {name: list(by_dist.values()) for name, by_dist in declared.items()}
    return found, {name: eps for name, eps in conflicts.items() if len(eps) > 1}


def _group_entry_points(metadata: Any) -> Any:
    """The entry points of :data:`ENTRY_POINT_GROUP` (Python 3.9's API takes no ``group=``)."""
    if sys.version_info >= (3, 10):
        return metadata.entry_points(group=ENTRY_POINT_GROUP)
    return metadata.entry_points().get(ENTRY_POINT_GROUP, ())


def _normalize(dist_name: str) -> str:
    return re.sub(r'[-_.]+', '-', dist_name).lower()


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return _scan()[0]


def _conflict_message(name: str, eps: list[metadata.EntryPoint]) -> str:
    declared = ', '.join(
        f'{getattr(getattr(ep, "dist", None), "name", "?")} '
        f'{getattr(getattr(ep, "dist", None), "version", "?")} ({ep.value})'
        for ep in eps
    )
    official = KNOWN_PLUGINS.get(name)
    keep = f' (the torchopt plugin is {official!r})' if official else ''
    return (
        f'plugin name {name!r} is declared by {len(eps)} distributions: {declared}; '
        f'uninstall all but one{keep}'
    )


def _install_hint(name: str) -> str:
    return f'pip install "torchopt-core[{name}]"'


def loaded(name: str) -> types.ModuleType | None:
    """The module of plugin ``name`` if it is loaded already, else ``None`` (never loads it)."""
    return _loaded.get(name)


def load(name: str) -> types.ModuleType:
    """Load plugin ``name`` (once) and return its module.

    Raises:
        PluginNotInstalledError: if the plugin is not installed, is blocked by
            ``TORCHOPT_DISABLE_PLUGINS``, or failed to import (the message says which and how to
            fix it).
    """
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _disabled():
            raise PluginNotInstalledError(
                f'torchopt plugin {name!r} is blocked by {DISABLE_ENV}={os.environ[DISABLE_ENV]!r}.'
            )
        if name in _broken:
            raise PluginNotInstalledError(f'torchopt plugin {name!r} is broken: {_broken[name]}')
        found, conflicts = _scan()
        if name in conflicts:  # never let sys.path order pick one silently
            _broken[name] = _conflict_message(name, conflicts[name])
            raise PluginNotInstalledError(f'torchopt plugin {name!r} is broken: {_broken[name]}')
        ep = found.get(name)
        if ep is None:
            dist = KNOWN_PLUGINS.get(name, f'torchopt-{name}')
            raise PluginNotInstalledError(
                f'this feature needs the torchopt plugin {name!r} (distribution {dist!r}), '
                f'which is not installed. Install it with: {_install_hint(name)}'
            )
        try:
            info = ep.load()
            if not isinstance(info, PluginInfo):
                raise TypeError(f'entry point {ep.value!r} is not a torchopt.plugins.PluginInfo')
            if info.api_version != PLUGIN_API_VERSION:
                raise TypeError(
                    f'plugin API version {info.api_version} != core API version '
                    f'{PLUGIN_API_VERSION}; install matching versions of torchopt-core and '
                    f'{KNOWN_PLUGINS.get(name, name)}'
                )
            module = importlib.import_module(info.module)
        except Exception as ex:  # a broken plugin must never break core
            _broken[name] = f'{type(ex).__name__}: {ex}'
            raise PluginNotInstalledError(
                f'torchopt plugin {name!r} ({ep.value}) failed to load: {_broken[name]}'
            ) from ex
        _loaded[name] = module
        return module


def is_available(name: str) -> bool:
    """Whether plugin ``name`` is installed, not blocked and loads (this loads it)."""
    try:
        load(name)
    except PluginNotInstalledError:
        return False
    return True


def plugins() -> list[PluginStatus]:
    """List the known and installed plugins with their status, without loading any.

    A name declared by several distributions is ``'broken'``, its error naming them all.
    """
    eps, conflicts = _scan()
    disabled = _disabled()
    rows = []
    for name in sorted(set(KNOWN_PLUGINS) | set(eps)):
        ep = eps.get(name)
        dist = getattr(getattr(ep, 'dist', None), 'name', None) if ep else None
        version = getattr(getattr(ep, 'dist', None), 'version', None) if ep else None
        if name in disabled:
            status, error = 'blocked', None
        elif ep is None:
            status, error = 'missing', None
        elif name in _loaded:
            status, error = 'loaded', None
        elif name in conflicts:
            status, error = 'broken', _conflict_message(name, conflicts[name])
        elif name in _broken:
            status, error = 'broken', _broken[name]
        else:
            status, error = 'available', None
        rows.append(PluginStatus(name, dist or KNOWN_PLUGINS.get(name), version, status, error))
    return rows


def resolve(path: str) -> types.ModuleType:
    """Return the plugin module serving the upstream module path ``path`` (loads the plugin)."""
    name, target = UPSTREAM_PATHS[path]
    try:
        load(name)
    except PluginNotInstalledError as ex:
        raise PluginNotInstalledError(f'{path} is provided by a plugin: {ex}') from ex
    return importlib.import_module(target)


class _AliasLoader(importlib.abc.Loader):
    """Serves an already-imported plugin module under its upstream name."""

    def __init__(self, module: types.ModuleType) -> None:
        self._module = module
        self._spec = module.__spec__

    def create_module(self, spec: Any) -> types.ModuleType:
        return self._module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system stamped the alias spec on the module; give it back its own.
        module.__spec__ = self._spec


class _UpstreamPathFinder(importlib.abc.MetaPathFinder):
    """Maps ``import torchopt.visual`` and the other upstream paths to plugin modules."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in UPSTREAM_PATHS:
            return None
        module = resolve(fullname)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module))


_finder = _UpstreamPathFinder()


def _install_finder() -> None:
    if not any(isinstance(f, _UpstreamPathFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _finder)


def _reset_for_tests() -> None:
    """Forget loaded and broken plugins (tests only)."""
    with _lock:
        _loaded.clear()
        _broken.clear()
        _reported_disable.clear()
