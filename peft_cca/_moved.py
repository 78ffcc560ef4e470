"""Module paths that moved in the 0.2 layout, importable for one more release with a DeprecationWarning.

``from peft_cca.config import CCAConfig`` keeps working: the old path is served by a small alias module whose
every attribute is looked up in the new module, with a warning that names the new path. The alias holds no
state of its own, so ``peft_cca.config.CCAConfig is peft_cca.method.config.CCAConfig``. Removed in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

# old module path -> new module path (the CHANGELOG lists the same moves)
MOVED = {
    "peft_cca.arch": "peft_cca.method.arch",
    "peft_cca.circuit": "peft_cca.method.circuit",
    "peft_cca.config": "peft_cca.method.config",
    "peft_cca.layer": "peft_cca.method.layer",
    "peft_cca.model": "peft_cca.method.model",
    "peft_cca.peft_type": "peft_cca.method.peft_type",
    "peft_cca.registration": "peft_cca.method",
    "peft_cca.models": "peft_cca.runtime.loading",
    "peft_cca.generation": "peft_cca.runtime.generation",
    "peft_cca.runfolder": "peft_cca.runtime.runfolder",
    "peft_cca.evaluate": "peft_cca.evaluation",
    "peft_cca.trainer": "peft_cca.amplify.trainer",
    "peft_cca.lora_baseline": "peft_cca.baselines.lora",
    "peft_cca.report": "peft_cca.reports",
    "peft_cca.demo": "peft_cca.cli.demo_runner",
    "peft_cca.dcm.data": "peft_cca.localize.records",
    "peft_cca.amplify.callbacks": "peft_cca.sweep.callbacks",
    "peft_cca.evaluation.run_problems": "peft_cca.localize.problems",
}


def forward_attribute(old: str, new: str, name: str):
    """``getattr(new module, name)`` with a DeprecationWarning pointing at the caller's line."""
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)  # dunder probes (copy, pickle, inspect) must not warn or import
    warnings.warn(f"{old} moved to {new}; import {name} from {new} ({old} is removed in 0.3)", DeprecationWarning, 3)
    return getattr(importlib.import_module(new), name)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):
        module = types.ModuleType(spec.name, f"Deprecated alias of {self.new}.")
        module.__getattr__ = lambda name: forward_attribute(spec.name, self.new, name)
        module.__dir__ = lambda: dir(importlib.import_module(self.new))
        return module

    def exec_module(self, module) -> None:
        """Nothing to run: the alias forwards every lookup."""


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        new = MOVED.get(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Serve the old paths (idempotent)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
