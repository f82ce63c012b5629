"""The access log's handler (http/accesslog.py): lines gathered and written a few at a
time, whole, in order with the records logged the ordinary way, and none left behind."""

from __future__ import annotations

import asyncio
import io
import logging

from entrepot.http import accesslog
from entrepot.http.accesslog import AccessLines


def test_gathered_lines_are_written_whole_in_pipe_sized_writes() -> None:
    writes: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    handler = AccessLines(Stream())
    lines = [f"line {n} " + "x" * 300 for n in range(40)]
    for line in lines:
        handler.add(line)  # (no event loop: each is written at once)
    assert "".join(writes) == "".join(f"{line}\n" for line in lines)

    writes.clear()
    handler._lines.extend(lines)  # as an event loop gathers them between two flushes
    handler.flush()
    assert "".join(writes) == "".join(f"{line}\n" for line in lines)
    assert len(writes) > 1
    assert all(len(w) <= accesslog.WRITE_BYTES and w.endswith("\n") for w in writes)


async def test_lines_follow_soon_and_records_keep_their_order() -> None:
    stream = io.StringIO()
    handler = AccessLines(stream)
    handler.add("first")
    handler.add("second")
    assert stream.getvalue() == ""  # gathered
    record = logging.LogRecord("entrepot.access", logging.INFO, __file__, 0, "third", (), None)
    handler.handle(record)
    assert stream.getvalue() == "first\nsecond\nthird\n"
    handler.add("fourth")
    deadline = asyncio.get_running_loop().time() + 10
    while "fourth" not in stream.getvalue():  # written FLUSH_SECONDS later
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert stream.getvalue().endswith("third\nfourth\n")
