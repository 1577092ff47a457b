"""``python -m vlprop.train dul ...`` / ``torchrun --nproc_per_node N -m vlprop.train dul ...``."""
import sys

from vlprop.errors import VlpropError
from vlprop.cli.train import train_main

if __name__ == "__main__":
    try:
        sys.exit(train_main(sys.argv[1:]))
    except VlpropError as exc:
        print(f"vlprop train: error: {exc}", file=sys.stderr)
        sys.exit(2)
