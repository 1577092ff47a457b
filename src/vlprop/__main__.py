"""``python -m vlprop ...`` and ``torchrun --nproc_per_node N -m vlprop eval vos ...``: the vlprop command."""
import sys

from vlprop.cli import main

if __name__ == "__main__":
    sys.exit(main())
