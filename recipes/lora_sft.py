"""Recipe: `peft-cca lora` as a script for `accelerate launch`.

    accelerate launch --config_file recipes/accelerate/single_cpu.yaml recipes/lora_sft.py --help
    accelerate launch --config_file recipes/accelerate/ddp_cpu.yaml recipes/lora_sft.py ...

Same options as `peft-cca lora`; the work is done by peft_cca.cli.commands.lora.
"""

import sys

from peft_cca.cli import main

if __name__ == "__main__":
    sys.exit(main(["lora", *sys.argv[1:]]))
