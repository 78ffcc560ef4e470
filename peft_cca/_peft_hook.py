"""Load :mod:`peft_cca.method` (which registers ``"cca"``) as soon as peft is in use, whatever the import order.

``import peft_cca`` must stay cheap (the CLI's ``--help`` may not import torch), yet ``import peft_cca`` followed
by ``PeftModel.from_pretrained(base, "cca-adapter")`` must work. So importing the package loads the method at
once when peft is already imported, and otherwise leaves a one-shot import hook that loads it right after peft's
own import finishes. peft has no plugin entry point for methods, so this hook is the narrowest way to do it. The
hook is the one the start-up ``.pth`` line uses (``peft_cca_autoload``), so there is one finder, not two.

The hook only *imports* the method package; the package registers itself at the end of its own ``__init__``.
When peft's import was started by the method package itself (``from peft_cca.method.config import ...``), the
package is still initialising and the import below returns it half made; its ``__init__`` then finishes and
registers. So there is one place that registers and no module that calls back.
"""

from __future__ import annotations

import importlib
import sys

from peft_cca_autoload import after_peft_import

METHOD_PACKAGE = "peft_cca.method"


def load_method() -> None:
    """Import the method package unless it is already imported or importing (it registers itself)."""
    if METHOD_PACKAGE not in sys.modules:
        importlib.import_module(METHOD_PACKAGE)


def load_method_when_peft_loads() -> None:
    """Load the method now if peft is imported, else as soon as it is."""
    after_peft_import(load_method)
