"""Load :mod:`peft_cca.method` (which registers ``"cca"``) as soon as peft is in use, whatever the import order.

``import peft_cca`` must stay cheap (the CLI's ``--help`` may not import torch), yet ``import peft_cca`` followed
by ``PeftModel.from_pretrained(base, "cca-adapter")`` must work. So importing the package loads the method at
once when peft is already imported, and otherwise leaves a one-shot import hook that loads it right after peft's
own import finishes. peft has no plugin entry point for methods, so this hook is the narrowest way to do it.

The hook only *imports* the method package; the package registers itself at the end of its own ``__init__``.
When peft's import was started by the method package itself (``from peft_cca.method.config import ...``), the
package is still initialising and the import below returns it half made; its ``__init__`` then finishes and
registers. So there is one place that registers and no module that calls back.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

METHOD_PACKAGE = "peft_cca.method"


def load_method() -> None:
    """Import the method package unless it is already imported or importing (it registers itself)."""
    if METHOD_PACKAGE not in sys.modules:
        importlib.import_module(METHOD_PACKAGE)


class _LoadAfterPeft(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps the loader of the ``peft`` package so that loading the method follows it.

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
            load_method()

        spec.loader.exec_module = exec_module
        return spec


def load_method_when_peft_loads() -> None:
    """Load the method now if peft is imported, else as soon as it is."""
    if "peft" in sys.modules:
        load_method()
    elif not any(isinstance(finder, _LoadAfterPeft) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LoadAfterPeft())
