"""A hook a module runs before its weights load: how `fast` becomes the version its weights were trained as.

torch made the hook public in 2.5 (`nn.Module.register_load_state_dict_pre_hook`); before, only the private
registration had it, with the same call (module, state dict, prefix, ...). The public one is used wherever it
exists; the private one only on an older torch. Not a fast path: REALFAKE_KERNELS leaves it alone, since without
it old weights would load as the wrong network.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

PreHook = Callable[..., None]  # (module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors)


def before_loading(module: nn.Module, hook: PreHook) -> RemovableHandle:
    """Run `hook(module, state_dict, prefix, ...)` before `module`'s own tensors load, wherever it sits in the model
    whose `load_state_dict` is called (`prefix` locates it); returns the handle that removes it."""
    public: Any = getattr(module, "register_load_state_dict_pre_hook", None)
    if public is not None:
        return public(hook)
    return private_registration(module, hook)


def private_registration(module: nn.Module, hook: PreHook) -> RemovableHandle:
    """The registration torch before 2.5 has (still there after): the fallback for `before_loading`."""
    return module._register_load_state_dict_pre_hook(hook, with_module=True)
