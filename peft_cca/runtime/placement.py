"""Where a model runs: device, dtype, attention kernel, device map and gradient checkpointing, decided once.

Every command, the demo and the recipes take the same flags (``peft_cca.cli.runtime_flags``), turn them into a
:class:`Runtime` (:func:`resolve_runtime`, which refuses what cannot run with one line) and load through
``models.load_model(name, runtime)``. Under ``accelerate launch`` the device is the process's own
(``PartialState().device``), so data-parallel processes never share a GPU.

Choices made here, so that every stage makes them the same way:

- ``--device auto``: cuda, then mps, then cpu.
- ``--dtype auto``: bf16 where the accelerator runs it, fp32 otherwise (a GPU without bf16 stays in fp32: fp16
  forward passes of bf16-trained models overflow too often to be a silent default). CCA deltas stay fp32 whatever
  the base dtype (``CCALayer``), so small updates are never rounded away.
- fp16 on the CPU is refused for training (``circuit``, ``amplify``, ``lora``): torch's CPU fp16 kernels are slow
  and partial, and there is no loss scaling there; bf16 or fp32 train on a CPU. Inference may use it.
- ``--attn-implementation auto`` lets transformers choose (sdpa where the model supports it, else eager: Gemma-2's
  attention softcapping rules out sdpa, so it gets eager). An explicit kernel is checked against the model class
  and the installed packages before any weight is read.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any

from peft_cca.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"auto": "auto", "fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}
DTYPES |= {"fp16": "float16", "float16": "float16"}
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# the package each flash-attention kernel needs, and the model-class flag transformers checks for each kernel
_FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
_SUPPORT_FLAGS = {"sdpa": "_supports_sdpa", "flex_attention": "_supports_flex_attn"}
_SUPPORT_FLAGS |= dict.fromkeys(_FLASH_PACKAGES, "_supports_flash_attn")


@dataclass(frozen=True)
class Runtime:
    """A resolved placement: concrete device and dtype; ``None`` attention or device map means transformers'."""

    device: str = "cpu"
    dtype: str = "float32"
    attn_implementation: str | None = None
    device_map: str | None = None
    gradient_checkpointing: bool = False

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``from_pretrained`` (placement on one device is a ``.to`` after loading)."""
        kwargs: dict[str, Any] = {"dtype": self.torch_dtype}
        if self.attn_implementation is not None:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        return kwargs

    def place(self, model):
        """Move ``model`` to the device (unless a device map placed it) and switch on gradient checkpointing."""
        if self.device_map is None:
            model.to(self.device)
        if self.gradient_checkpointing:
            # non-reentrant checkpointing needs no input gradients, so frozen embeddings (PEFT) just work
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return model

    def record(self) -> dict[str, Any]:
        """What a run's meta stores: the placement it ran with."""
        return asdict(self)


def process_state():
    """accelerate's ``PartialState`` of this process, told to use the CPU where torch sees no accelerator.

    accelerate's multi-GPU launcher (torchrun, which its ``use_cpu`` configs use too, see
    recipes/accelerate/ddp_cpu.yaml) does not pass ``use_cpu`` on to the processes, and a ``PartialState()``
    without ``cpu=True`` on a machine without a GPU then sees one process, not a gloo group: every process would
    do all the work and write the same files. The first call fixes the state for the whole process.
    """
    import atexit

    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.accelerator.is_available())
    if state.num_processes > 1:
        # a gloo group left to interpreter shutdown can abort a process that has written all its work
        # ("terminate called without an active exception", SIGABRT): the finished run would exit as failed.
        # unregister first, so that many calls register the teardown once
        atexit.unregister(_end_process_group)
        atexit.register(_end_process_group)
    return state


def _end_process_group() -> None:
    """Tear the process group down before interpreter shutdown (see :func:`process_state`)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _accelerate_device():
    """The device of this process when launched by accelerate with several processes, else ``None``."""
    state = process_state()
    return state.device if state.num_processes > 1 else None


def _resolve_device(device: str) -> str:
    import torch

    kind, _, index = device.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise UsageError(f"--device {device!r} is not a device: choose auto, cpu, cuda, cuda:N or mps")
    launched = _accelerate_device()
    if launched is not None:
        if kind not in ("auto", launched.type):
            raise UsageError(
                f"--device {device} under accelerate launch, whose process runs on {launched}: "
                f"drop --device or change the accelerate config (use_cpu)"
            )
        return "cpu" if launched.type == "cpu" else str(launched)  # one CPU: "cpu" as a single process says
    if kind == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu (or auto)")
        if index and int(index) >= count:
            raise UsageError(f"--device {device}: only {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: this torch build or machine has no Apple MPS; use --device cpu (or auto)")
    return device


def _bf16_runs_on(device: str) -> bool:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    if device == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device="mps")
        except (RuntimeError, TypeError):
            return False
    return True  # the CPU runs bf16 (slowly without AVX512-BF16, but exactly)


def _resolve_dtype(dtype: str, device: str, training: bool) -> str:
    name = DTYPES.get(dtype)
    if name is None:
        raise UsageError(f"--dtype {dtype!r} is not a dtype: choose auto, fp32, bf16 or fp16")
    accelerator = not device.startswith("cpu")
    if name == "auto":
        return "bfloat16" if accelerator and _bf16_runs_on(device) else "float32"
    if name == "bfloat16" and not _bf16_runs_on(device):
        raise UsageError(f"--dtype bf16: {device} cannot run bfloat16; use --dtype fp16 or fp32")
    if name == "float16" and not accelerator and training:
        raise UsageError(
            "--dtype fp16 on the CPU cannot train (slow, partial kernels and no loss scaling): use bf16 or fp32"
        )
    return name


def _check_attn(attn: str, device: str, dtype: str) -> str | None:
    if attn not in ATTN_IMPLEMENTATIONS:
        raise UsageError(f"--attn-implementation {attn!r} is unknown: choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    package = _FLASH_PACKAGES.get(attn)
    if package is not None:
        if importlib.util.find_spec(package) is None:
            raise UsageError(
                f"--attn-implementation {attn} needs the {package!r} package, which is not installed: "
                f"install it (pip install flash-attn) or use sdpa/eager"
            )
        if not device.startswith("cuda"):
            raise UsageError(f"--attn-implementation {attn} runs on CUDA GPUs only, not {device}: use sdpa or eager")
        if dtype == "float32":
            raise UsageError(f"--attn-implementation {attn} needs --dtype bf16 or fp16, not fp32")
    return None if attn == "auto" else attn


def resolve_runtime(
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "auto",
    device_map: str | None = None,
    gradient_checkpointing: bool = False,
    *,
    training: bool = False,
) -> Runtime:
    """A :class:`Runtime` for these requests, or a :class:`UsageError` naming the flag that cannot be met."""
    resolved_device = _resolve_device(device)
    resolved_dtype = _resolve_dtype(dtype, resolved_device, training)
    attn = _check_attn(attn_implementation, resolved_device, resolved_dtype)
    if device_map is not None:
        if device_map not in DEVICE_MAPS:
            raise UsageError(f"--device-map {device_map!r} is unknown: choose one of {', '.join(DEVICE_MAPS)}")
        if _accelerate_device() is not None:
            raise UsageError(
                "--device-map splits one model over the GPUs of one process; under accelerate launch with several "
                "processes use an FSDP config instead (recipes/accelerate/fsdp.yaml) or launch one process"
            )
    return Runtime(resolved_device, resolved_dtype, attn, device_map, gradient_checkpointing)


def check_model_supports(model_class: type, runtime: Runtime) -> None:
    """Refuse an attention kernel the model class does not implement (transformers' own flags), before loading."""
    flag = _SUPPORT_FLAGS.get(runtime.attn_implementation or "")
    if flag is not None and not getattr(model_class, flag, False):
        gemma2 = "Gemma2" in model_class.__name__
        hint = " (its attention softcapping needs eager or flash_attention_2)" if gemma2 else ""
        raise UsageError(
            f"--attn-implementation {runtime.attn_implementation}: {model_class.__name__} does not support it{hint}; "
            f"use auto or eager"
        )


def placement(model) -> dict[str, Any]:
    """Where ``model`` actually is: device(s), dtype, attention kernel, checkpointing (for a run's meta)."""
    device_map = getattr(model, "hf_device_map", None)
    return {
        "device": str(next(model.parameters()).device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "device_map": {str(k): str(v) for k, v in device_map.items()} if device_map else None,
        "gradient_checkpointing": bool(getattr(model, "is_activation_checkpointing", False)),
    }


def record_runtime(folder, model) -> None:
    """Write ``runtime.json`` (the model's :func:`placement`) into a stage's output folder, from the main process."""
    from pathlib import Path

    from peft_cca.runtime.runfolder import atomic_write_json

    if process_state().is_main_process:
        atomic_write_json(Path(folder) / "runtime.json", placement(model))


def trainer_use_cpu(model) -> bool:
    """``TrainingArguments.use_cpu`` that keeps the Trainer where the runtime put the model (MPS stays on MPS)."""
    return next(model.parameters()).device.type == "cpu"
