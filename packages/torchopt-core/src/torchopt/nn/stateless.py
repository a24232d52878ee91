"""Stateless module calls: swap tensors into a module by name (upstream ``torchopt.nn.stateless``).

::

    with torchopt.nn.reparametrize(net, {'fc.weight': w, 'fc.bias': b}):
        out = net(x)  # computed with w and b, differentiable with respect to them
    # net holds its own tensors again, also when the body raised
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = ['MISSING', 'reparameterize', 'reparametrize', 'swap_state']


class _Missing:
    """The type of :data:`MISSING`."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return 'MISSING'

    def __reduce__(self) -> str:
        return 'MISSING'


#: Sentinel for "no such attribute". As a value given to :func:`swap_state` it deletes the
#: attribute; as a value returned by it (with ``allow_missing=True``) it says the attribute did
#: not exist, so swapping the returned dict back deletes what was added.
MISSING: Any = _Missing()

_STORES = ('_parameters', '_buffers', '_meta_parameters')


class _Swap(NamedTuple):
    """One swapped attribute: where it lived, and what was there before."""

    module: nn.Module
    attr: str
    store: str | None  # '_parameters' / '_buffers' / '_meta_parameters', None: plain attribute
    persistent: bool  # for buffers: not in ``_non_persistent_buffers_set``
    position: int  # index of ``attr`` in its store (restored entries keep their order)
    old: Any  # the previous value, or MISSING


def _as_dict(named_tensors: Any) -> dict[str, Any]:
    if isinstance(named_tensors, dict):
        items = named_tensors
    else:
        try:
            items = dict(named_tensors)
        except (TypeError, ValueError) as ex:
            raise TypeError(
                '`named_tensors` must be a dict or an iterable of (name, tensor) pairs, got '
                f'{type(named_tensors).__name__}'
            ) from ex
    for name in items:
        if not isinstance(name, str):
            raise TypeError(f'`named_tensors` keys must be dotted names (str), got {name!r}')
    return items


def _resolve(module: nn.Module, path: str, cache: dict[str, nn.Module]) -> nn.Module:
    """Return the submodule at dotted ``path`` ('' is ``module``)."""
    if path in cache:
        return cache[path]
    parent_path, _, attr = path.rpartition('.')
    parent = _resolve(module, parent_path, cache)
    try:
        sub = getattr(parent, attr)
    except AttributeError as ex:
        raise AttributeError(
            f"`named_tensors`: '{path}' is not a submodule of {type(module).__name__}"
        ) from ex
    if not isinstance(sub, nn.Module):
        raise AttributeError(
            f"`named_tensors`: '{path}' is a {type(sub).__name__}, not a submodule"
        )
    cache[path] = sub
    return sub


def _locate(mod: nn.Module, attr: str) -> str | None:
    for store in _STORES:
        container = mod.__dict__.get(store)
        if container is not None and attr in container:
            return store
    return None


def _put(
    mod: nn.Module, attr: str, store: str | None, persistent: bool, value: Any, position: int = -1
) -> None:
    """Put ``value`` at ``attr`` in ``store`` (``MISSING`` deletes), with no type checks.

    An entry absent from ``store`` is inserted at ``position`` (the dict object is kept, only
    its order is rebuilt), so that parameter order, hence optimizer state order, survives a
    delete/restore round trip.
    """
    if value is MISSING:
        if hasattr(mod, attr):
            delattr(mod, attr)
        return
    if store is None:
        setattr(mod, attr, value)
        return
    if _locate(mod, attr) is None and attr in mod.__dict__:
        object.__delattr__(mod, attr)  # a plain attribute shadowing the store entry
    container = mod.__dict__[store]
    if attr in container or not 0 <= position < len(container):
        container[attr] = value
    else:
        items = list(container.items())
        items.insert(position, (attr, value))
        container.clear()
        container.update(items)
    if store == '_buffers' and not persistent:
        mod._non_persistent_buffers_set.add(attr)


def _swap(module: nn.Module, named_tensors: dict[str, Any], allow_missing: bool) -> list[_Swap]:
    """Swap every entry in; on failure restore the ones already swapped and re-raise."""
    cache: dict[str, nn.Module] = {'': module}
    done: list[_Swap] = []
    try:
        for name, value in named_tensors.items():
            parent_path, _, attr = name.rpartition('.')
            mod = _resolve(module, parent_path, cache)
            store = _locate(mod, attr)
            if store is not None:
                old = mod.__dict__[store][attr]
            elif allow_missing:
                old = getattr(mod, attr, MISSING)
            else:
                try:
                    old = getattr(mod, attr)
                except AttributeError as ex:
                    raise AttributeError(
                        f"`named_tensors`: {type(mod).__name__} has no attribute '{attr}' "
                        f"(for '{name}'); pass allow_missing=True to add it"
                    ) from ex
            persistent = attr not in getattr(mod, '_non_persistent_buffers_set', ())
            position = list(mod.__dict__[store]).index(attr) if store is not None else -1
            record = _Swap(mod, attr, store, persistent, position, old)
            _put(mod, attr, store, persistent, value)
            done.append(record)
    except BaseException:
        _restore(done)
        raise
    return done


def _restore(records: list[_Swap]) -> None:
    """Undo :func:`_swap` records, last first, each back into the store it came from."""
    for record in reversed(records):
        _put(
            record.module, record.attr, record.store, record.persistent, record.old, record.position
        )


def swap_state(
    module: nn.Module,
    named_tensors: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    allow_missing: bool = False,
) -> dict[str, torch.Tensor]:
    """Put tensors into ``module`` by dotted name and return what was there.

    Each ``'a.b.weight'`` is written straight into the ``_parameters``, ``_buffers`` or
    ``_meta_parameters`` dict of submodule ``a.b`` that holds ``weight`` (no
    :class:`torch.nn.Parameter` checks, so any tensor, non-leaf included, can be put in);
    a name held by none of them is set with ``setattr``. The value :data:`MISSING` deletes the
    attribute. Swapping the returned dict back restores the module; if an entry fails, the
    entries already swapped are restored before the error propagates.

    Args:
        module: the module to modify in place.
        named_tensors: ``{dotted_name: tensor}`` or an iterable of ``(dotted_name, tensor)``.
        allow_missing: accept names the module does not have (their old value is
            :data:`MISSING`); otherwise such a name raises :class:`AttributeError`.

    Returns:
        ``{dotted_name: previous value}``.

    Raises:
        TypeError: if ``module`` is not a module or ``named_tensors`` is not name/tensor pairs.
        AttributeError: if a name (or the submodule path in it) does not exist.

    """
    if not isinstance(module, nn.Module):
        raise TypeError(f'`module` must be an nn.Module, got {type(module).__name__}')
    named = _as_dict(named_tensors)
    records = _swap(module, named, allow_missing)
    return {name: record.old for name, record in zip(named, records)}


@contextlib.contextmanager
def reparametrize(
    module: nn.Module,
    named_tensors: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    allow_missing: bool = False,
) -> Iterator[nn.Module]:
    """Context manager: :func:`swap_state` on entry, exact restore on exit.

    On exit (an exception included) every attribute goes back to the store it came from: a
    parameter deleted with :data:`MISSING` comes back as a parameter, a non-persistent buffer
    as a non-persistent buffer, and an attribute added under ``allow_missing`` is deleted.

    Args:
        module: the module to reparametrize.
        named_tensors: ``{dotted_name: tensor}`` or an iterable of ``(dotted_name, tensor)``.
        allow_missing: see :func:`swap_state`.

    Yields:
        ``module``, holding the given tensors.

    """
    if not isinstance(module, nn.Module):
        raise TypeError(f'`module` must be an nn.Module, got {type(module).__name__}')
    records = _swap(module, _as_dict(named_tensors), allow_missing)
    try:
        yield module
    finally:
        _restore(records)


reparameterize = reparametrize
