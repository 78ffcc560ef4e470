"""Recipe: `peft-cca lora` as a script for `accelerate launch`.

    accelerate launch --config_file recipes/accelerate/single_cpu.yaml recipes/lora_sft.py --help
    accelerate launch --config_file recipes/accelerate/ddp_cpu.yaml recipes/lora_sft.py ...

Same options as `peft-cca lora`; the work is done by peft_cca.commands.lora.
"""

from __future__ import annotations

import argparse
import logging
import sys

from peft_cca.commands import lora as command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=command.HELP)
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return command.run(args)


if __name__ == "__main__":
    sys.exit(main())
