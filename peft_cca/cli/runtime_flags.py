"""The placement flags every command takes (``--device``, ``--dtype``, ``--attn-implementation``, ``--device-map``,
``--gradient-checkpointing``), turned into a :class:`~peft_cca.runtime.placement.Runtime`; what each choice means is
the runtime layer's (:mod:`peft_cca.runtime.placement`), the flags are the CLI's."""

from __future__ import annotations

import argparse

from peft_cca.runtime.placement import ATTN_IMPLEMENTATIONS, DEVICE_MAPS, DTYPES, Runtime, resolve_runtime


def add_runtime_arguments(parser: argparse.ArgumentParser, *, training: bool = False) -> None:
    """The placement flags; ``training`` adds ``--gradient-checkpointing``."""
    group = parser.add_argument_group("where the model runs")
    group.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    group.add_argument(
        "--dtype",
        default="auto",
        choices=sorted(DTYPES),
        help="base weights' dtype; auto: bf16 on an accelerator that runs it, else fp32 (CCA deltas are always fp32)",
    )
    group.add_argument(
        "--attn-implementation",
        default="auto",
        choices=ATTN_IMPLEMENTATIONS,
        help="attention kernel; auto: transformers' choice for the model (sdpa, or eager for Gemma-2's softcapping)",
    )
    group.add_argument(
        "--device-map",
        choices=DEVICE_MAPS,
        help="split a model larger than one GPU over all GPUs of this process (accelerate's big-model placement)",
    )
    if training:
        group.add_argument(
            "--gradient-checkpointing",
            action="store_true",
            help="recompute activations in the backward pass: less memory for long prefixes, about 30%% more time",
        )


def runtime_from_args(args: argparse.Namespace, *, training: bool = False) -> Runtime:
    """:func:`resolve_runtime` from the flags of :func:`add_runtime_arguments` (absent flags take their defaults)."""
    return resolve_runtime(
        getattr(args, "device", "auto"),
        getattr(args, "dtype", "auto"),
        getattr(args, "attn_implementation", None) or "auto",
        getattr(args, "device_map", None),
        getattr(args, "gradient_checkpointing", False),
        training=training,
    )


def runtime_argv(args: argparse.Namespace) -> list[str]:
    """The placement flags of ``args`` as command-line words, for a command that runs other commands (the demo)."""
    words = ["--device", args.device, "--dtype", args.dtype, "--attn-implementation", args.attn_implementation]
    if getattr(args, "device_map", None):
        words += ["--device-map", args.device_map]
    if getattr(args, "gradient_checkpointing", False):
        words.append("--gradient-checkpointing")
    return words
