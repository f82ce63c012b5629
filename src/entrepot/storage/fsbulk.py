"""Helper processes for the filesystem driver's bulk calls while a collection runs (see
FilesystemDriver.bulk_apart): each runs fsbulkops by its path, one request at a time; a
bulk call sends each of its chunks to an idle one and waits for all.

A helper that fails (exits, or its call is cancelled half-way, leaving a reply nobody
reads) is stopped and dropped; once none is left, the driver's calls run in its threads
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import sys
from typing import Any

from entrepot.storage import fsbulkops
from entrepot.storage.driver import StorageError
from entrepot.storage.fschildren import Stoppable

_LENGTH = fsbulkops.LENGTH


class _Helper:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self.requests, self.replies = process.stdin, process.stdout
        # Stopped with the walks while a collection rests (fswalk.walks_stopped).
        self.stoppable = Stoppable(process.pid)

    async def call(self, op: str, args: tuple[Any, ...]) -> Any:
        body = marshal.dumps((op, args))
        self.requests.write(_LENGTH.pack(len(body)) + body)
        await self.requests.drain()
        header = await self.replies.readexactly(_LENGTH.size)
        ok, result = marshal.loads(await self.replies.readexactly(_LENGTH.unpack(header)[0]))
        if not ok:
            raise OSError(*result)
        return result

    async def stop(self) -> None:
        self.stoppable.close()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()


class HelpersGone(Exception):
    """No helper is left: the call is for the driver's threads."""


class BulkHelpers:
    """``count`` helper processes, started by ``start``, stopped by ``stop``."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._idle: asyncio.Queue[_Helper | None] = asyncio.Queue()  # None: all gone
        self._all: list[_Helper] = []

    @property
    def available(self) -> bool:
        return bool(self._all)

    async def start(self) -> None:
        """Start the helpers; where none can start, the driver's threads serve."""
        for _ in range(self.count):
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    "-S",
                    fsbulkops.__file__,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=None,  # a crash's traceback goes where the command's errors go
                )
            except OSError:
                break
            helper = _Helper(process)
            try:  # its first message: started (a Python, or this file, it cannot read: not)
                ready = await helper.replies.readexactly(_LENGTH.size) == _LENGTH.pack(0)
            except asyncio.IncompleteReadError:
                ready = False
            if not ready:
                await helper.stop()
                break
            self._all.append(helper)
            self._idle.put_nowait(helper)
        if not self._all:
            self._idle.put_nowait(None)

    async def call(self, op: str, args: tuple[Any, ...]) -> Any:
        """``fsbulkops.OPS[op](*args)`` in an idle helper; OSError as it raised it;
        HelpersGone once none is left."""
        helper = await self._idle.get()
        if helper is None:
            self._idle.put_nowait(None)  # for the next caller too
            raise HelpersGone
        try:
            result = await helper.call(op, args)
        except OSError:
            self._idle.put_nowait(helper)  # it answered: still in step
            raise
        except BaseException as exc:  # cancelled, or it died: out of step with its pipe
            self._all.remove(helper)
            if not self._all:
                self._idle.put_nowait(None)
            await asyncio.shield(helper.stop())
            if isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
                raise StorageError(
                    f"a helper process of the filesystem driver ended (exit status "
                    f"{helper.process.returncode}) during a bulk {op}"
                ) from exc
            raise
        self._idle.put_nowait(helper)
        return result

    async def stop(self) -> None:
        helpers, self._all = self._all, []
        self._idle.put_nowait(None)
        for helper in helpers:
            helper.requests.close()
        for helper in helpers:
            helper.stoppable.close()
            try:
                await asyncio.wait_for(helper.process.wait(), 5)
            except TimeoutError:
                await helper.stop()
