"""The README's configuration key table is the one the models generate."""

from __future__ import annotations

import re
from pathlib import Path

from entrepot.config import Config
from entrepot.config.schema import key_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_key_table_matches_the_models() -> None:
    block = re.search(
        r"<!-- config-keys: begin -->\n(.*?)<!-- config-keys: end -->", README.read_text(), re.S
    )
    assert block is not None, "README.md lost its config-keys markers"
    assert block[1] == key_table(Config), "run: python scripts/config-table.py"


def test_the_table_lists_every_key_including_the_unimplemented() -> None:
    table = key_table(Config)
    for row in ("`http.addr` | `:5000`", "`proxies[N].tagttl` | 1m", "`auth.builtin.users`"):
        assert row in table
    assert "`redis.addr`" in table and "not implemented yet" in table
