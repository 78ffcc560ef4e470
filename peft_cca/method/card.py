"""The README.md model card of a saved CCA adapter: peft's usual fields, and what a reader needs to load it.

peft cannot load a "cca" adapter until ``import peft_cca`` has registered the method; without it
``PeftModel.from_pretrained`` stops at a bare ``KeyError: 'CCA'`` that names neither the package nor the fix.
The folder is all such a reader has, so its card says what to install and import. peft writes its card before
the adapter configs (and only in the top folder); ``CCAConfig.save_pretrained`` then updates it, or writes one
in a named adapter's subfolder, the way ``PeftModel.create_or_update_model_card`` does.
"""

from __future__ import annotations

import os

from huggingface_hub import ModelCard, ModelCardData
from peft import PeftConfig

from peft_cca.method.circuit import Circuit

CARD_NAME = "README.md"
TAGS = ("peft-cca", "cca")
INSTALL = "pip install peft-cca"
IMPORT = 'import peft_cca  # registers the "cca" method'
HEADING = "## Loading this CCA adapter"
MISSING_IMPORT_ERROR = "KeyError: 'CCA'"
# a peft task type to the Hub's pipeline tag and the Auto class that loads its base model
TASKS = {
    "CAUSAL_LM": ("text-generation", "AutoModelForCausalLM"),
    "SEQ_CLS": ("text-classification", "AutoModelForSequenceClassification"),
    "TOKEN_CLS": ("token-classification", "AutoModelForTokenClassification"),
    "QUESTION_ANS": ("question-answering", "AutoModelForQuestionAnswering"),
}
# the base model's class name, for a config without a task type
ARCHITECTURE_SUFFIXES = {
    "ForCausalLM": "CAUSAL_LM",
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
}


def task_of(task_type: str | None, architecture: str | None) -> str | None:
    """The config's task, or else the one the base model's class names; None when neither tells."""
    if task_type is not None:
        return str(task_type)
    if not architecture:
        return None
    return next((task for end, task in ARCHITECTURE_SUFFIXES.items() if architecture.endswith(end)), None)


def loading_section(
    circuit: Circuit, mlp_targets: list[str], base_model: str | None, task: str | None, weights_note: str | None
) -> str:
    """The card's section on what this adapter is and how to load it (and, for a quantized offline base, what it was
    trained on: its deltas fit those weights, not the hub model's exactly)."""
    auto_class = TASKS.get(task, (None, "AutoModel"))[1]
    base = f'"{base_model}"' if base_model else '"<base model>"'
    return "\n".join(
        [
            HEADING,
            "",
            f"A Constructive Circuit Amplification adapter (PEFT method `cca`): trained row deltas for {circuit!r}, "
            f"MLP targets {mlp_targets}. peft loads it only once `peft_cca` has registered the method:",
            "",
            "```bash",
            INSTALL,
            "```",
            "",
            "```python",
            IMPORT,
            "from peft import PeftModel",
            f"from transformers import {auto_class}",
            "",
            f"base = {auto_class}.from_pretrained({base})",
            'model = PeftModel.from_pretrained(base, "path/to/this/adapter")',
            "```",
            "",
            "After `pip install peft-cca`, a start-up hook registers the method when peft is imported, so "
            "`PeftModel.from_pretrained` and `AutoPeftModelForCausalLM.from_pretrained` work without the import too. "
            f"Without the package, peft stops at `{MISSING_IMPORT_ERROR}`.",
            "",
            *([f"**Trained on a quantized copy of the base.** {weights_note}", ""] if weights_note else []),
        ]
    )


def write_model_card(
    folder: str,
    config: PeftConfig,
    circuit: Circuit,
    mlp_targets: list[str],
    architecture: str | None,
    weights_note: str | None = None,
) -> str:
    """Create or update ``folder/README.md`` for the CCA adapter whose ``config`` is saved there; returns its path."""
    filename = os.path.join(folder, CARD_NAME)
    card = ModelCard.load(filename) if os.path.isfile(filename) else ModelCard.from_template(ModelCardData())
    card.data["library_name"] = "peft"
    tags = {tag for tag in card.data.tags or [] if tag != "base_model:adapter:"} | set(TAGS)  # peft's tag for ""
    base_model = config.base_model_name_or_path
    if base_model:
        card.data["base_model"] = base_model
        tags.add(f"base_model:adapter:{base_model}")
    elif not card.data.get("base_model"):
        card.data.pop("base_model", None)  # peft writes base_model: '' for a model built from a config
    card.data["tags"] = sorted(tags)
    task = task_of(config.task_type, architecture)
    if task in TASKS and not card.data.pipeline_tag:
        card.data.pipeline_tag = TASKS[task][0]
    lines = card.text.splitlines()
    if HEADING not in lines:
        section = loading_section(circuit, mlp_targets, base_model, task, weights_note)
        # right under the title, above the template's many placeholder sections
        title = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
        at = 0 if title is None else title + 1
        lines[at:at] = ["", *section.splitlines()]
        card.text = "\n".join(lines)
    card.save(filename)
    return filename
