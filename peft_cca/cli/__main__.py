"""``python -m peft_cca.cli``: the ``peft-cca`` command."""

import sys

from peft_cca.cli import main

sys.exit(main())
