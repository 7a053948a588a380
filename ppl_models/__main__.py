"""``python -m ppl_models``: the ``ppl-models`` command (also what ``torchrun -m ppl_models``
launches)."""

import sys

from ppl_models.cli import main

if __name__ == "__main__":
    sys.exit(main())
