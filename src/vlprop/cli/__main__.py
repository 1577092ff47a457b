"""``python -m vlprop.cli ...`` (also under torchrun): the vlprop command."""
import sys

from vlprop.cli import main

if __name__ == "__main__":
    sys.exit(main())
