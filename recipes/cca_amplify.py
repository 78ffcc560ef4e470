"""Recipe: `peft-cca amplify` as a script for `accelerate launch`.

    accelerate launch --config_file recipes/accelerate/single_cpu.yaml recipes/cca_amplify.py --help
    accelerate launch --config_file recipes/accelerate/ddp_cpu.yaml recipes/cca_amplify.py ...

Same options as `peft-cca amplify`; the work is done by peft_cca.cli.commands.amplify.
"""

import sys

from peft_cca.cli import main

if __name__ == "__main__":
    sys.exit(main(["amplify", *sys.argv[1:]]))
