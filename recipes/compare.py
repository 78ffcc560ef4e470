"""Recipe: `peft-cca compare` as a script for `accelerate launch`.

    accelerate launch --config_file recipes/accelerate/single_cpu.yaml recipes/compare.py --help
    accelerate launch --config_file recipes/accelerate/ddp_cpu.yaml recipes/compare.py ...

Same options as `peft-cca compare`; the work is done by peft_cca.cli.commands.compare.
"""

import sys

from peft_cca.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
