"""``python -m landscape ...``: the command line, as the ``landscape`` script
runs it; under torchrun ``torchrun --nproc-per-node 2 -m landscape ...``
needs no script on ``PATH``."""

import sys

from landscape.cli import main

if __name__ == "__main__":
    sys.exit(main())
