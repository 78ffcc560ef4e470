"""Shared test setup: tests/ on sys.path for tiny_models, and an offline HF hub."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `peft-cca evaluate` runs the offline general suite by default where its data is installed; tests that exercise
# it ask for it (--general offline), the rest stay fast
os.environ.setdefault("PEFT_CCA_GENERAL", "none")
sys.path.insert(0, str(Path(__file__).parent))
