"""Live tensor bytes over a stretch of code, counted at the dispatcher: on real tensors or on fake ones.

``LiveBytes`` sees every storage an operator creates (views of an input's storage are not new memory), adds its
size when it appears and subtracts it when the storage is freed, and keeps the peak. Run on fake tensors
(``torch._subclasses.FakeTensorMode``) it tells what a step *would* allocate, without allocating it: this is how
``growlm.training.planner`` measures a paper-sized step on a laptop. On real CPU tensors it agrees with torch's own
allocator reports (``torch.profiler`` with ``profile_memory``; tests/training/test_planner.py).

Fake tensors hold no values: a data-dependent read (``bool(t.any())``, ``t.item()``) gets a stand-in (False; the
scalar 1; a boolean False) so that code which branches on values runs its common path.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_STAND_INS = {torch.ops.aten.is_nonzero.default: False, torch.ops.aten._local_scalar_dense.default: 1}


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created inside the ``with`` that are still alive, and their peak.

    ``fake=True``: data-dependent reads get stand-ins (see the module's docstring). ``mark(name)`` records the live
    bytes under a name; ``reset_peak()`` starts a new peak from what is live now.
    """

    def __init__(self, fake: bool = False):
        super().__init__()
        self.fake = fake
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # storage key -> bytes, for storages created inside and still alive

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.fake and func in _STAND_INS:
            if func is torch.ops.aten._local_scalar_dense.default and args[0].dtype == torch.bool:
                return False
            return _STAND_INS[func]
        out = func(*args, **kwargs)
        inputs = {_storage_key(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_key(t)
            if key in inputs or key in self._sizes:  # a view, an in-place result or a storage already counted
                continue
            storage = t.untyped_storage()
            n = storage.nbytes()
            self._sizes[key] = n
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key)
        return out

    def _freed(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def reset_peak(self) -> None:
        """Start a new peak from the bytes live now."""
        self.peak = self.live

    def owned(self, tensors) -> int:
        """Bytes of those of ``tensors`` whose storage was created inside the tracker and is alive."""
        keys = {_storage_key(t) for t in tensors if t is not None}
        return sum(self._sizes.get(k, 0) for k in keys)


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages of ``tensors`` (shared storages counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())
