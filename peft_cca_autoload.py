"""Start-up hook: peft loads "cca" adapters without an ``import peft_cca`` (``PeftModel.from_pretrained``,
``AutoPeftModelForCausalLM.from_pretrained``).

peft has no plugin entry point for tuner methods: it knows "cca" only once ``peft_cca`` has registered it. The one
line of ``peft_cca_autoload.pth``, which installing this package puts in site-packages, imports this module at every
interpreter start. So it must cost nothing: it imports no module (``sys`` is always loaded) and only leaves a finder
that waits for ``import peft``. Right after peft's own import it imports ``peft_cca`` (cheap, no torch of its own),
whose hook registers the method. Any failure here is swallowed: a start-up hook must never break Python.
"""

from __future__ import annotations

import sys

# no other import and no typing: every interpreter start pays for this module (``typing`` alone costs ~2.5 ms)


class _AfterPeft:
    """Finds nothing itself: it wraps the loader of the ``peft`` package so that ``callback`` follows it.

    It stays in ``sys.meta_path`` until peft is executed: a mere ``importlib.util.find_spec("peft")`` (transformers
    asks it to see whether peft is installed) must not use it up.
    """

    def __init__(self, callback) -> None:  # () -> None
        self.callback = callback
        self._searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft" or self._searching:
            return None
        import importlib.util

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
            self.callback()

        spec.loader.exec_module = exec_module
        return spec


def after_peft_import(callback) -> None:  # () -> None
    """Run ``callback`` now if peft is imported, else right after its import finishes."""
    if "peft" in sys.modules:
        callback()
    elif not any(isinstance(f, _AfterPeft) and f.callback is callback for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterPeft(callback))


def _import_peft_cca() -> None:
    import importlib

    try:
        importlib.import_module("peft_cca")  # its own hook registers "cca" now that peft is loaded
    except Exception:  # a broken install must not break every program that imports peft
        return


def install() -> None:
    """What the ``.pth`` line runs."""
    try:
        after_peft_import(_import_peft_cca)
    except Exception:
        return
