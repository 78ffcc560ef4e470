"""`import peft_cca` registers "cca" with peft whenever peft loads, without importing torch itself.

Each case runs in a fresh interpreter, since registration depends on what was imported before.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = "from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING as m; assert 'CCA' in m, 'cca is not registered'"


@pytest.mark.parametrize(
    "imports",
    [
        "import peft_cca; import peft",  # peft after the package
        "import peft; import peft_cca",  # peft before it
        # transformers asks whether peft is installed before importing it: the hook must survive the question
        "import importlib.util, peft_cca; importlib.util.find_spec('peft'); import peft",
        # a method module that imports peft while the method package is half imported
        "from peft_cca.method.config import CCAConfig",
        "from peft_cca.method.model import CCAModel",
        "import peft_cca.method.arch",
        "import peft_cca.method",
        "from peft_cca import CCAConfig",
        "import peft_cca.amplify.trainer",
        "import peft_cca.trainer",
        # the 0.1 module paths, kept for one release
        "from peft_cca.config import CCAConfig",
        "from peft_cca.model import CCAModel",
        "import peft_cca.arch",
        # peft's own submodules first, and transformers (which imports peft lazily) before the package
        "import peft.tuners.lora; import peft_cca",
        "import transformers, peft_cca; from peft import PeftModel",
    ],
)
def test_cca_is_registered_whatever_the_import_order(imports):
    done = subprocess.run([sys.executable, "-c", f"{imports}\n{CHECK}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_importing_the_package_imports_no_torch():
    code = "import sys, peft_cca; assert 'torch' not in sys.modules and 'peft' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
