"""Sphinx extension: an API reference generated from the ``__all__`` of every public module.

At ``builder-inited`` it walks the public modules (no ``_private`` path component) of the six
distributions, reads each module's ``__all__`` and writes one page per module under
``api/_generated/``. Every public object is documented in full exactly once, on the page of the
deepest public module that exports it (``torchopt.alias.adam`` rather than ``torchopt.adam``);
the other pages list it in their summary table with a link there. Names re-exported from other
libraries (``optree``'s tree utilities in :mod:`torchopt.pytree`) are listed with their origin.

Checks (each a Sphinx warning, so ``-W`` fails the build):

* a public module without ``__all__``, or a name in ``__all__`` that does not resolve;
* a public module, class or function of ours without a docstring (a ``NamedTuple``'s generated
  ``Name(field, ...)`` docstring counts as missing).

A ``missing-reference`` handler lets docstrings and pages refer to any public spelling of an
object: ``torchopt.Adam``, ``torchopt.diff.implicit.custom_root`` (an upstream path served by a
plugin) or ``torchopt.visual.make_dot`` resolve to the page where the object is documented.

The upstream paths served by plugins (``torchopt.diff.implicit.custom_root``,
``torchopt.visual.make_dot``, ... from :data:`torchopt.plugins.UPSTREAM_PATHS`) are also put in
the search index, pointing at the documented object, by a small domain of their own
(:class:`UpstreamPaths`): in the Python domain they would make short cross-references ambiguous.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import types
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.domains import Domain, ObjType
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

__all__ = ['setup']

logger = logging.getLogger(__name__)

#: The import names of the six distributions, in the order of the reference.
PACKAGES = (
    'torchopt',
    'torchopt_implicit',
    'torchopt_zero',
    'torchopt_distributed',
    'torchopt_viz',
    'torchopt_accel',
)

#: Modules that hold metadata only (documented on their parent page, never on their own).
SKIP_MODULES = frozenset({'torchopt.version'})

#: Public names that upstream keeps out of ``__all__`` but documents (reference §1).
EXTRA_NAMES = {
    'torchopt.base': ('IdentityGradientTransformation', 'TransformInitFn', 'TransformUpdateFn'),
}

OUT_DIR = 'api/_generated'

_STATE: dict[str, Any] = {}  # the catalog of this process (not pickled with the environment)


class Entry(NamedTuple):
    """One name exported by one module."""

    module: str
    name: str
    obj: Any


def public_modules(package: str) -> list[str]:
    """All importable public modules of ``package`` (itself first), sorted."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, package + '.'):
        if any(part.startswith('_') for part in info.name.split('.')):
            continue
        if info.name not in SKIP_MODULES:
            names.append(info.name)
    return sorted(names)


def kind_of(name: str, obj: Any) -> str:
    """How to document ``obj`` exported as ``name``: module, class, function, alias or data."""
    if isinstance(obj, types.ModuleType):
        return 'module'
    if inspect.isclass(obj) or inspect.isroutine(obj):
        if getattr(obj, '__name__', name) != name:
            return 'alias'
        return 'class' if inspect.isclass(obj) else 'function'
    return 'data'


def is_ours(obj: Any) -> bool:
    """Whether ``obj`` is defined in one of the six packages (not re-exported from a library)."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__.split('.')[0] in PACKAGES
    if isinstance(obj, External):
        return False
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return True  # data (numbers, dicts, type aliases): exported by the module that lists it
    module = getattr(obj, '__module__', None)
    return not isinstance(module, str) or module.split('.')[0] in PACKAGES


class External:
    """Data that a module re-exports from another library (``from optree import X``)."""

    def __init__(self, value: Any, origin: str) -> None:
        self.value = value
        self.origin = origin


def import_origins(module: types.ModuleType) -> dict[str, str]:
    """``{name: source module}`` for the top-level ``from X import name`` of ``module``."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return {}
    origins: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            for alias in stmt.names:
                if alias.name != '*':
                    origins[alias.asname or alias.name] = stmt.module
                    continue
                try:  # ``from X import *``: the names X exports
                    star = importlib.import_module(stmt.module)
                except ImportError:
                    continue
                for name in getattr(star, '__all__', ()):
                    origins.setdefault(name, stmt.module)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    origins.pop(target.id, None)  # defined here
    return origins


def has_docstring(obj: Any) -> bool:
    """Whether ``obj`` has a docstring of its own."""
    doc = obj.__doc__ if isinstance(obj, types.ModuleType) else inspect.getdoc(obj)
    if not doc or not doc.strip():
        return False
    if inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, '_fields'):
        return not doc.startswith(f'{obj.__name__}(')  # NamedTuple's generated docstring
    return True


class Catalog:
    """Every public module, its exports and where each object is documented."""

    def __init__(self) -> None:
        self.modules: dict[str, types.ModuleType] = {}
        self.exports: dict[str, list[Entry]] = {}
        self.home: dict[tuple[str, int], str] = {}  # (name, id(obj)) -> documenting module
        self.by_id: dict[int, str] = {}  # id(obj) -> canonical dotted path (classes, ...)
        self.problems: list[str] = []
        self._attr_docs: dict[str, Any] = {}

    def build(self) -> None:
        """Import every public module and decide where each exported object is documented."""
        for package in PACKAGES:
            try:
                names = public_modules(package)
            except ImportError as ex:
                self.problems.append(f'package {package!r} cannot be imported: {ex}')
                continue
            for modname in names:
                try:
                    self.modules[modname] = importlib.import_module(modname)
                except Exception as ex:  # noqa: BLE001 - reported as a build warning
                    self.problems.append(f'module {modname!r} cannot be imported: {ex!r}')
        for modname, module in self.modules.items():
            if not has_docstring(module):
                self.problems.append(f'public module {modname!r} has no docstring')
            exported = getattr(module, '__all__', None)
            if exported is None:
                self.problems.append(f'public module {modname!r} has no __all__')
                exported = []
            entries = []
            for name in [*exported, *EXTRA_NAMES.get(modname, ())]:
                try:
                    obj = getattr(module, name)
                except Exception as ex:  # noqa: BLE001
                    self.problems.append(f'{modname}.__all__ names {name!r}, which fails: {ex!r}')
                    continue
                entries.append(Entry(modname, name, obj))
            self.exports[modname] = entries
        # Data imported from another library is a re-export, like its functions and classes.
        for modname, entries in self.exports.items():
            origins = import_origins(self.modules[modname])
            for i, entry in enumerate(entries):
                origin = origins.get(entry.name)
                if origin and kind_of(entry.name, entry.obj) == 'data':
                    if origin.split('.')[0] not in PACKAGES:
                        entries[i] = entry._replace(obj=External(entry.obj, origin))
        # The deepest public module that exports an object documents it.
        for modname in sorted(self.exports, key=lambda m: (-m.count('.'), m)):
            for entry in self.exports[modname]:
                kind = kind_of(entry.name, entry.obj)
                if kind == 'module' or not is_ours(entry.obj):
                    continue
                key = (entry.name, id(entry.obj))
                if key not in self.home:
                    self.home[key] = modname
                    if kind in ('class', 'function'):
                        self.by_id.setdefault(id(entry.obj), f'{modname}.{entry.name}')
        for modname, module in self.modules.items():
            self.by_id.setdefault(id(module), modname)
        for (name, _), modname in self.home.items():
            obj = getattr(self.modules[modname], name)
            kind = kind_of(name, obj)
            if kind in ('class', 'function') and not has_docstring(obj):
                self.problems.append(f'public name {modname}.{name} has no docstring')
            elif kind == 'data' and not self.data_doc(modname, name):
                self.problems.append(
                    f'public name {modname}.{name} has no docstring (a `#:` comment above it)'
                )

    def data_doc(self, modname: str, name: str) -> list[str]:
        """The ``#:`` documentation comment of module-level data ``name`` in ``modname``."""
        if modname not in self._attr_docs:
            try:
                analyzer = ModuleAnalyzer.for_module(modname)
                self._attr_docs[modname] = analyzer.find_attr_docs()
            except PycodeError:
                self._attr_docs[modname] = {}
        return [line for line in self._attr_docs[modname].get(('', name), []) if line is not None]

    def named(self, name: str) -> list[str]:
        """The documented dotted paths whose last component is ``name``."""
        return sorted({f'{mod}.{n}' for (n, _), mod in self.home.items() if n == name})

    def target(self, obj: Any, name: str | None = None) -> str | None:
        """The dotted path under which ``obj`` is documented, if it is."""
        if name is not None and (name, id(obj)) in self.home:
            return f'{self.home[name, id(obj)]}.{name}'
        return self.by_id.get(id(obj))


def summary(obj: Any) -> str:
    """The first sentence of the docstring, for summary tables."""
    doc = inspect.getdoc(obj) or ''
    first = doc.strip().split('\n\n')[0].replace('\n', ' ').strip()
    return first.replace('|', r'\|')


def role_for(kind: str, obj: Any) -> str:
    """The Python-domain role that links to ``obj``."""
    if kind == 'module':
        return 'mod'
    if kind == 'alias':
        return 'data'
    return {'class': 'class', 'function': 'func'}.get(kind, 'data')


def render_module(catalog: Catalog, modname: str) -> str:
    """The reST source of the page of ``modname``."""
    title = f'``{modname}``'
    lines = [title, '=' * len(title), '', f'.. automodule:: {modname}', '   :no-members:', '']
    entries = catalog.exports.get(modname, [])
    submodules = [m for m in catalog.modules if m.rsplit('.', 1)[0] == modname and m != modname]
    if entries:
        lines += ['.. list-table::', '   :widths: 30 70', '', '']
        for entry in entries:
            kind = kind_of(entry.name, entry.obj)
            target = catalog.target(entry.obj, entry.name) if is_ours(entry.obj) else None
            if target is not None:
                ref = f':py:{role_for(kind, entry.obj)}:`{entry.name} <{target}>`'
                if kind == 'alias':
                    original = catalog.target(entry.obj)
                    text = f'Alias of :py:obj:`~{original}`.' if original else 'Alias.'
                elif kind == 'data':
                    home = catalog.home[entry.name, id(entry.obj)]
                    doc = catalog.data_doc(home, entry.name)
                    text = ' '.join(doc).split('. ')[0].strip().replace('|', r'\|')
                else:
                    text = summary(entry.obj)
            else:
                origin = getattr(entry.obj, '__module__', None) or 'another library'
                if isinstance(entry.obj, External):
                    origin = entry.obj.origin
                ref = f'``{entry.name}``'
                text = f'Re-exported from ``{origin}``.'
            lines += [f'   * - {ref}', f'     - {text or "(undocumented)"}']
        lines.append('')
    if submodules:
        lines += ['.. rubric:: Submodules', '', '.. toctree::', '   :maxdepth: 1', '']
        lines += [f'   {m}' for m in submodules]
        lines.append('')
    documented = [
        e for e in entries if is_ours(e.obj) and catalog.home.get((e.name, id(e.obj))) == modname
    ]
    for entry in documented:
        kind = kind_of(entry.name, entry.obj)
        full = f'{modname}.{entry.name}'
        if kind == 'class':
            lines += [f'.. autoclass:: {full}', '   :members:', '   :show-inheritance:']
            fields = getattr(entry.obj, '_fields', None)
            if issubclass(entry.obj, tuple) and fields:
                # NamedTuple fields are described by the docstring (``Attributes:``).
                lines.append(f'   :exclude-members: __init__, __new__, {", ".join(fields)}')
            lines.append('')
        elif kind == 'function':
            lines += [f'.. autofunction:: {full}', '']
        elif kind == 'alias':
            original = catalog.target(entry.obj)
            role = role_for(kind, entry.obj)
            link = f':py:{role}:`{original}`' if original else f'``{entry.obj.__name__}``'
            lines += [f'.. py:data:: {entry.name}', '', f'   Alias of {link}.', '']
        else:
            doc = catalog.data_doc(modname, entry.name) or ['(undocumented)']
            lines += [f'.. py:data:: {entry.name}']
            value = repr(entry.obj)
            if len(value) <= 100 and '\n' not in value:
                lines.append(f'   :value: {value}')
            lines.append('')
            lines += [f'   {line}' if line else '' for line in doc]
            lines.append('')
    return '\n'.join(lines) + '\n'


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds it (keeps incremental builds fast)."""
    if not path.exists() or path.read_text(encoding='utf-8') != text:
        path.write_text(text, encoding='utf-8')


def generate(app: Sphinx) -> None:
    """``builder-inited``: import everything, check it and write the API pages."""
    catalog = Catalog()
    catalog.build()
    for problem in catalog.problems:
        logger.warning('API reference: %s', problem, type='apigen', subtype='check')
    out = Path(app.srcdir) / OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    wanted = {f'{m}.rst' for m in catalog.modules}
    for stale in out.glob('*.rst'):
        if stale.name not in wanted:
            stale.unlink()
    for modname in catalog.modules:
        write_if_changed(out / f'{modname}.rst', render_module(catalog, modname))
    _STATE['catalog'] = catalog


def resolve_object(path: str) -> Any:
    """Import the longest module prefix of ``path`` and get the rest as attributes."""
    parts = path.split('.')
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:cut]))
        except Exception:  # noqa: BLE001 - not a module path
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def missing_reference(
    app: Sphinx, env: Any, node: Any, contnode: nodes.Element
) -> nodes.Element | None:
    """Resolve any public spelling of a documented object to where it is documented."""
    if node.get('refdomain') != 'py':
        return None
    catalog = _STATE.get('catalog')
    if catalog is None:
        return None
    target = node.get('reftarget', '')
    modname, classname = node.get('py:module'), node.get('py:class')
    candidates = []
    if target.split('.')[0] in PACKAGES:
        candidates.append(target)
    elif modname and modname.split('.')[0] in PACKAGES:
        if classname:
            candidates.append(f'{modname}.{classname}.{target}')
        candidates.append(f'{modname}.{target}')
    elif '.' not in target:
        candidates += catalog.named(target)
    domain = env.get_domain('py')
    for candidate in candidates:
        parts = candidate.split('.')
        for cut in range(len(parts), 0, -1):
            obj = resolve_object('.'.join(parts[:cut]))
            if obj is None:
                continue
            if isinstance(obj, TypeVar):
                return contnode  # a type variable: plain text, nothing to link
            canonical = catalog.target(obj, parts[cut - 1])
            if canonical is None:
                continue  # a method or attribute: resolve its owner
            new_target = '.'.join([canonical, *parts[cut:]])
            for attempt in (new_target, canonical):  # an undocumented member links its owner
                if attempt == node['reftarget']:
                    continue
                found = domain.resolve_xref(
                    env, node['refdoc'], app.builder, node['reftype'], attempt, node, contnode
                )
                if found is None and attempt == canonical:
                    found = domain.resolve_any_xref(
                        env, node['refdoc'], app.builder, attempt, node, contnode
                    )
                    found = found[0][1] if found else None
                if found is not None:
                    return found
            break
    return None


class UpstreamPaths(Domain):
    """TorchOpt's module paths served by plugins, as entries of the search index only.

    Each entry is an upstream spelling (``torchopt.diff.implicit.custom_root``) of an object
    documented under its plugin's name (``torchopt_implicit.decorator.custom_root``), with that
    object's page and anchor. The domain resolves no cross-reference (``missing_reference``
    does that for every spelling).
    """

    name = 'torchopt-upstream'
    label = 'Python'
    object_types = {  # noqa: RUF012 - Sphinx's API: a class attribute
        kind: ObjType(f'{kind} (TorchOpt path)', kind)
        for kind in (
            'module',
            'class',
            'exception',
            'function',
            'method',
            'property',
            'attribute',
            'data',
        )
    }
    initial_data: dict[str, Any] = {'objects': {}}  # noqa: RUF012

    def get_objects(self) -> Any:
        """The upstream spellings: ``(name, name, type, docname, anchor, 1)``."""
        for name, (docname, anchor, kind) in sorted(self.data['objects'].items()):
            yield name, name, kind, docname, anchor, 1

    def clear_doc(self, docname: str) -> None:
        """Forget the entries that point into ``docname``."""
        objects = self.data['objects']
        for name in [n for n, entry in objects.items() if entry[0] == docname]:
            del objects[name]

    def merge_domaindata(self, docnames: Any, otherdata: dict[str, Any]) -> None:
        """Take the entries of a parallel reader (recomputed at ``env-updated`` anyway)."""
        for name, entry in otherdata['objects'].items():
            if entry[0] in docnames:
                self.data['objects'][name] = entry

    def resolve_xref(self, *args: Any) -> None:
        """Resolve nothing: references go through the Python domain."""
        return None

    def resolve_any_xref(self, *args: Any) -> list[Any]:
        """Resolve nothing: references go through the Python domain."""
        return []


def index_upstream_paths(app: Sphinx, env: Any) -> list[str]:
    """``env-updated``: an entry of :class:`UpstreamPaths` per upstream spelling of our names.

    For every path of :data:`torchopt.plugins.UPSTREAM_PATHS`, the module itself and every name
    its plugin module exports (with the methods and attributes of exported classes) get the
    upstream spelling, pointing where the Python domain documents the object.
    """
    from torchopt.plugins import UPSTREAM_PATHS

    catalog = _STATE.get('catalog')
    if catalog is None:
        return []
    py = env.get_domain('py')
    entries: dict[str, tuple[str, str, str]] = {}
    for upstream, (_, target) in sorted(UPSTREAM_PATHS.items()):
        module = py.modules.get(target)
        if module is not None:
            entries[upstream] = (module.docname, module.node_id, 'module')
        for entry in catalog.exports.get(target, []):
            kind = kind_of(entry.name, entry.obj)
            if kind == 'module' or not is_ours(entry.obj):
                continue
            canonical = catalog.target(entry.obj, entry.name)
            if canonical is None:
                continue
            for name, obj in py.objects.items():
                if name == canonical or name.startswith(canonical + '.'):
                    alias = f'{upstream}.{entry.name}{name[len(canonical) :]}'
                    entries[alias] = (obj.docname, obj.node_id, obj.objtype)
    domain = env.get_domain(UpstreamPaths.name)
    domain.data['objects'] = entries
    return []


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the generator, the reference resolver and the upstream paths' index."""
    app.connect('builder-inited', generate)
    app.connect('missing-reference', missing_reference)
    app.add_domain(UpstreamPaths)
    app.connect('env-updated', index_upstream_paths)
    return {'version': '1.0', 'parallel_read_safe': True, 'parallel_write_safe': True}
