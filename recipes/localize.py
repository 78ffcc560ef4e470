"""Recipe: `peft-cca localize` (stage 1) as a script for `accelerate launch`: problems are dealt to the processes.

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/localize.py --model M --out runs/x
    accelerate launch --config_file recipes/accelerate/ddp_gpu.yaml recipes/localize.py --model M --out runs/x

Same options as `peft-cca localize`; N processes write the same files as one (the main process writes them), and an
interrupted run resumes from the problems already finished.
"""

import sys

from peft_cca.cli import main

if __name__ == "__main__":
    sys.exit(main(["localize", *sys.argv[1:]]))
