"""Rewrite the README's configuration key table from the configuration's models."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from entrepot.config import Config
from entrepot.config.schema import key_table

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- config-keys: begin -->\n).*?(<!-- config-keys: end -->)", re.S)


def main() -> int:
    text = README.read_text()
    README.write_text(BLOCK.sub(lambda m: m[1] + key_table(Config) + m[2], text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
