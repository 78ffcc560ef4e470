"""Recipe: `peft-cca evaluate` as a script for `accelerate launch`: the problems are split across processes.

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/evaluate.py --run runs/x/localize ...
    accelerate launch --config_file recipes/accelerate/ddp_gpu.yaml recipes/evaluate.py --run runs/x/localize ...

Same options as `peft-cca evaluate`; N processes write the same file as one, and an interrupted run resumes.
"""

import sys

from peft_cca.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
