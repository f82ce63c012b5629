"""``python -m entrepot serve CONFIG``, and the ``entrepot`` program (``run``)."""

import sys

from entrepot.lowpriority import lower_if_collecting


def run() -> int:
    lower_if_collecting(sys.argv[1:])  # before the command's imports (lowpriority.py)
    from entrepot.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
