"""Desiderata-based Component Masking (DCM): learn which heads and neurons, amplified at the pivot
token, push the model toward the desired token. Stage 2 of CCA; its output is a :class:`Circuit`."""

from peft_cca.dcm.cache import PrefixCache
from peft_cca.dcm.interventions import FORMS, ComponentMask, MaskIntervention
from peft_cca.dcm.paths import FullSequencePath, OneTokenPath, make_path
from peft_cca.dcm.sweep import SweepResult, choose, sweep
from peft_cca.dcm.train import DCMConfig, DCMResult, train_mask
from peft_cca.localize.records import DatasetError, Record, load_records, tokenizer_fingerprint

__all__ = [
    "FORMS",
    "ComponentMask",
    "DCMConfig",
    "DCMResult",
    "DatasetError",
    "FullSequencePath",
    "MaskIntervention",
    "OneTokenPath",
    "PrefixCache",
    "Record",
    "SweepResult",
    "choose",
    "load_records",
    "make_path",
    "sweep",
    "tokenizer_fingerprint",
    "train_mask",
]
