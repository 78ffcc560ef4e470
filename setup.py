"""Only what pyproject.toml cannot say: ship ``peft_cca_autoload.pth`` at the root of site-packages.

The ``.pth`` line lets peft load CCA adapters without ``import peft_cca`` (see ``peft_cca_autoload.py``). setuptools
has no option for a file at the root of a wheel, so ``build_py`` copies it there for a regular wheel, and an editable
install (``pip install -e``, what ``scripts/setup.sh`` runs) writes it beside its own ``__editable__`` ``.pth``.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "peft_cca_autoload.pth"


class BuildWithStartupHook(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]


class _StrategyWithStartupHook:
    """An editable wheel's strategy (what writes its ``.pth`` files), plus ours."""

    def __init__(self, strategy) -> None:
        self.strategy = strategy

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self.strategy.__exit__(*exc)

    def __call__(self, wheel, files, mapping) -> None:
        self.strategy(wheel, files, mapping)
        wheel.writestr(PTH, Path(PTH).read_text())


class EditableWithStartupHook(editable_wheel):
    def _select_strategy(self, *args, **kwargs):  # setuptools' hook point for what an editable wheel holds
        return _StrategyWithStartupHook(super()._select_strategy(*args, **kwargs))


setup(cmdclass={"build_py": BuildWithStartupHook, "editable_wheel": EditableWithStartupHook})
