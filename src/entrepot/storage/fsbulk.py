"""Helper processes for the filesystem driver's bulk calls while a collection runs (see
FilesystemDriver.bulk_apart): each runs fsbulkops by its path, one request at a time,
answering in order; a bulk call sends each of its chunks to a helper and waits for all.

Each helper is sent up to DEPTH requests before its first answer: it starts the next one
the moment it answers, instead of idling while the answer goes through the caller's event
loop and the next request comes back (a fifth of each helper's time in a collection's
deletes). A task per helper reads its answers.

A helper that ends (or answers out of step) is stopped and dropped, failing the calls it
had; once none is left, the driver's calls run in its threads again. A cancelled call's
answer is read and dropped: the helper stays in step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import marshal
import sys
from typing import Any

from entrepot.storage import fsbulkops
from entrepot.storage.driver import StorageError
from entrepot.storage.fschildren import Stoppable

_LENGTH = fsbulkops.LENGTH
# Requests a helper is sent before it answers the first (see the module docstring).
DEPTH = 2


class _Gone(Exception):
    """The helper ended (or stopped answering in step) before it answered."""


class _Helper:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self.requests, self.replies = process.stdin, process.stdout
        # Stopped with the walks while a collection rests (fswalk.walks_stopped).
        self.stoppable = Stoppable(process.pid)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.reader: asyncio.Task[None] | None = None
        self.gone = False

    async def ready(self) -> bool:
        """Its first message: started (a Python, or this file, it cannot read: not)."""
        try:
            return await self.replies.readexactly(_LENGTH.size) == _LENGTH.pack(0)
        except asyncio.IncompleteReadError:
            return False

    def send(self, op: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """The answer to ``(op, args)``, sent now: ``(ok, result)``."""
        if self.gone:
            raise _Gone
        body = marshal.dumps((op, args))
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(answer)
        self.requests.write(_LENGTH.pack(len(body)) + body)
        return answer

    async def read_answers(self) -> None:
        """Each answer to the call waiting longest; until the helper ends."""
        try:
            while True:
                header = await self.replies.readexactly(_LENGTH.size)
                answer = marshal.loads(await self.replies.readexactly(_LENGTH.unpack(header)[0]))
                waiter = self.waiting.popleft()  # IndexError: an answer nobody asked for
                if not waiter.done():  # else its caller was cancelled
                    waiter.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError, IndexError, ValueError):
            pass
        finally:
            self.fail_waiting()

    def fail_waiting(self) -> None:
        self.gone = True
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(_Gone())

    async def stop(self) -> None:
        self.stoppable.close()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        await self.stop_reading()

    async def stop_reading(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        self.fail_waiting()


class HelpersGone(Exception):
    """No helper is left: the call is for the driver's threads."""


class BulkHelpers:
    """``count`` helper processes, started by ``start``, stopped by ``stop``."""

    def __init__(self, count: int) -> None:
        self.count = count
        # DEPTH places per helper, taken by a call until its answer (None: all gone).
        self._places: asyncio.Queue[_Helper | None] = asyncio.Queue()
        self._all: list[_Helper] = []
        self._starting: asyncio.Future[None] | None = None  # the wait for their ready

    @property
    def available(self) -> bool:
        return bool(self._all)

    async def start(self) -> None:
        """Start the helpers, all at once, and go on: calls wait until they have said they
        are ready (a collection waited 30 ms for that before its mark, which needs none).
        One that cannot start is dropped; with none left, the driver's threads serve."""
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
                continue
            self._all.append(_Helper(process))
        self._starting = asyncio.ensure_future(self._ready(list(self._all)))

    async def _ready(self, helpers: list[_Helper]) -> None:
        """Each helper's places once all have said they are ready (or failed to)."""
        ready = await asyncio.gather(*(helper.ready() for helper in helpers))
        for helper, ok in zip(helpers, ready, strict=True):
            if ok:
                helper.reader = asyncio.ensure_future(helper.read_answers())
            else:
                await self._drop(helper)
        for _ in range(DEPTH):
            for helper in self._all:
                self._places.put_nowait(helper)
        if not self._all:
            self._places.put_nowait(None)

    async def call(self, op: str, args: tuple[Any, ...]) -> Any:
        """``fsbulkops.OPS[op](*args)`` in a helper; OSError as it raised it;
        HelpersGone once none is left."""
        while True:
            helper = await self._places.get()
            if helper is None:
                self._places.put_nowait(None)  # for the next caller too
                raise HelpersGone
            if helper in self._all:
                break  # else a place of a helper dropped since: gone with it
        try:
            answer = helper.send(op, args)
            await helper.requests.drain()
            ok, result = await answer
        except (_Gone, ConnectionError) as exc:
            await self._drop(helper)
            raise StorageError(
                f"a helper process of the filesystem driver ended (exit status "
                f"{helper.process.returncode}) during a bulk {op}"
            ) from exc
        finally:
            if helper in self._all:
                self._places.put_nowait(helper)
        if not ok:
            raise OSError(*result)
        return result

    async def _drop(self, helper: _Helper) -> None:
        if helper not in self._all:
            await asyncio.shield(helper.process.wait())  # dropped by another call
            return
        self._all.remove(helper)
        if not self._all:
            self._places.put_nowait(None)
        await asyncio.shield(helper.stop())

    async def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        helpers, self._all = self._all, []
        self._places.put_nowait(None)
        for helper in helpers:
            helper.requests.close()
        for helper in helpers:
            helper.stoppable.close()
            try:
                await asyncio.wait_for(helper.process.wait(), 5)
            except TimeoutError:
                await helper.stop()
            await helper.stop_reading()
