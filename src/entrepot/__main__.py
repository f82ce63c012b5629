"""``python -m entrepot serve CONFIG``."""

import sys

from entrepot.cli import main

if __name__ == "__main__":
    sys.exit(main())
