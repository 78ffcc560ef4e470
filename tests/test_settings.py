"""Settings as dataclasses end to end: each flag's default and help come from its dataclass field (one source), and
the parsed flags reach the library as that dataclass, unchanged."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from peft_cca.amplify.settings import AmplifySettings
from peft_cca.baselines.settings import LoraSettings
from peft_cca.cli import build_parser
from peft_cca.cli.demo_presets import Preset
from peft_cca.documented import help_of
from peft_cca.evaluation.settings import Scoring
from peft_cca.sweep.settings import StepChoice

# dataclass field -> (command, flag) of every setting a command parses
FLAGS = {
    (AmplifySettings, "lrs"): ("amplify", "--lr"),
    (AmplifySettings, "steps"): ("amplify", "--steps"),
    (AmplifySettings, "optimizer"): ("amplify", "--optimizer"),
    (AmplifySettings, "micro_batch"): ("amplify", "--micro-batch"),
    (AmplifySettings, "mlp_targets"): ("amplify", "--mlp-targets"),
    (AmplifySettings, "no_mask"): ("amplify", "--no-mask"),
    (AmplifySettings, "objective"): ("amplify", "--objective"),
    (LoraSettings, "lrs"): ("lora", "--lr"),
    (LoraSettings, "rank"): ("lora", "--rank"),
    (LoraSettings, "alpha"): ("lora", "--alpha"),
    (LoraSettings, "dropout"): ("lora", "--dropout"),
    (LoraSettings, "epochs"): ("lora", "--epochs"),
    (LoraSettings, "effective_batch"): ("lora", "--effective-batch"),
    (LoraSettings, "per_device_batch"): ("lora", "--micro-batch"),
    (LoraSettings, "eval_every"): ("lora", "--eval-every"),
    (LoraSettings, "max_length"): ("lora", "--max-length"),
    (StepChoice, "forgetting_tokens"): ("amplify", "--forgetting-tokens"),
    (StepChoice, "max_forgetting"): ("lora", "--max-forgetting"),
    (StepChoice, "select_on"): ("amplify", "--select-on"),
    (Scoring, "batch_size"): ("lora", "--eval-batch-size"),
}


def action(command: str, flag: str) -> argparse.Action:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices[command]._actions if flag in a.option_strings)


@pytest.mark.parametrize(("settings", "name"), sorted(FLAGS, key=lambda key: (key[0].__name__, key[1])))
def test_a_flag_shows_its_fields_help_and_default(settings, name):
    found = action(*FLAGS[settings, name])
    field = next(f for f in fields(settings) if f.name == name)
    assert found.help == help_of(settings, name)
    default = field.default_factory() if callable(field.default_factory) else field.default
    if found.default is not None or default is not None:
        assert found.default == (list(default) if isinstance(default, tuple) else default)


def test_every_count_of_a_preset_is_a_demo_flag():
    for count in fields(Preset):
        found = action("demo", "--" + count.name.replace("_", "-"))
        assert found.dest == count.name and found.help == count.metadata["help"]


def test_amplify_and_lora_hand_their_parsed_settings_to_the_library():
    """What the parser read arrives as AmplifySettings / LoraSettings (what amplify() and lora_sft() take), with
    stage 1's prompt style filling what the flags leave open."""
    from peft_cca.cli.commands import amplify as amplify_command
    from peft_cca.cli.commands import lora as lora_command

    argv = ["--lr", "0.5", "0.25", "--max-forgetting", "0.02", "--eval-batch-size", "3", "--seed", "4"]
    parser = build_parser()
    for command, module, kind in (("amplify", amplify_command, AmplifySettings), ("lora", lora_command, LoraSettings)):
        built = module.settings_from_args(parser.parse_args([command, "--run", "r", *argv]), _Meta(), None)
        assert isinstance(built, kind) and built.lrs == (0.5, 0.25) and built.seed == 4
        assert built.step_choice == StepChoice(max_forgetting=0.02)
        assert built.scoring.batch_size == 3 and built.scoring.prompt_style == "chat"


class _Meta:
    """What stage 1 recorded, as far as the scoring reads it."""

    prompt_style = "chat"
    task = "rg:chain_sum"
