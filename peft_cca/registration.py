"""Register the ``"cca"`` method with peft, once, whenever peft is in use.

``import peft_cca`` must stay cheap (the CLI's ``--help`` may not import torch), yet ``import peft_cca`` followed
by ``PeftModel.from_pretrained(base, "cca-adapter")`` must work. So importing the package registers at once when
peft is already imported, and otherwise leaves a one-shot import hook that registers right after peft's own
import finishes. peft has no plugin entry point for methods, so this hook is the narrowest way to do it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def register() -> None:
    """Add "CCA" to peft's method tables (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from peft_cca.config import CCAConfig
    from peft_cca.model import CCAModel
    from peft_cca.peft_type import CCA_PEFT_TYPE

    if CCA_PEFT_TYPE not in PEFT_TYPE_TO_TUNER_MAPPING:
        register_peft_method(name="cca", config_cls=CCAConfig, model_cls=CCAModel)


# The modules that registering imports. While one of them is half imported (it imports peft, peft's import
# finishes, the hook fires), registering would import it circularly: the registration waits, and the end of
# each of these modules calls :func:`core_module_loaded`, which completes it.
_CORE = (
    "peft_cca.arch",
    "peft_cca.circuit",
    "peft_cca.peft_type",
    "peft_cca.config",
    "peft_cca.layer",
    "peft_cca.model",
)
_pending = False


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _register_when_ready(loaded: str | None = None) -> None:
    global _pending
    if any(_initializing(name) for name in _CORE if name != loaded):
        _pending = True
        return
    _pending = False
    register()


def core_module_loaded(name: str) -> None:
    """Called by the last line of each module in ``_CORE``: completes a registration that had to wait."""
    if _pending:
        _register_when_ready(loaded=name)


class _RegisterAfterPeft(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps the loader of the ``peft`` package so that registering follows its import.

    It stays in ``sys.meta_path`` until peft is actually executed: a mere ``importlib.util.find_spec("peft")``
    (transformers asks it to see whether peft is installed) must not use it up.
    """

    def __init__(self) -> None:
        self._searching = False

    def find_spec(self, fullname, path, target=None):
        if fullname != "peft" or self._searching:
            return None
        self._searching = True  # the other finders locate peft; this one must not answer itself
        try:
            spec = importlib.util.find_spec("peft")
        finally:
            self._searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module) -> None:
            load(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_when_ready()

        spec.loader.exec_module = exec_module
        return spec


def register_when_peft_loads() -> None:
    """Register now if peft is imported, else as soon as it is."""
    if "peft" in sys.modules:
        _register_when_ready()
    elif not any(isinstance(finder, _RegisterAfterPeft) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterPeft())
