"""A store that registry:2 served as a pull-through cache, taken over.

registry:2 in proxy mode caches what it pulls under the plain names its clients ask for
(``library/nginx``) and refuses every push, so such a store holds only cached content;
registry:2 2.8 leaves no file saying so. Served as pushed repositories, those names would
shadow the upstream forever (a moved upstream tag never followed). So when Entrepot first
opens a store (no decision recorded yet), it decides what its plain-name repositories
were, from ``proxycache.registry2store``:

- ``auto``: registry:2's cache when a mirror upstream serves plain names (registry:2's
  ``proxy`` block), the store has plain-name repositories and no earlier Entrepot wrote
  to it (``entrepot/epochs``, which every Entrepot write leaves); else pushed;
- ``cache``: registry:2's cache (a store an earlier Entrepot already served, say), except
  the names an earlier Entrepot created tags in (it records a tags epoch for them): pushes;
- ``pushed``: pushed repositories, as before. On every start it also releases names
  recorded as cache earlier, so it undoes a wrong decision.

The decision is recorded through the storage driver, outside registry:2's tree
(``entrepot/registry2-cache/decision``, and ``.../names/<name>/_cache`` per cached name),
and never made again: what Entrepot writes later (pushes under plain names included) is
not reclassified. A cached name is served as the mirror's cache (tags revalidated after
``tagttl``, moved upstream tags followed) with its content kept where registry:2 put it,
so registry:2 can serve the store again. A manifest pushed to such a name removes its
marker: it is a pushed repository from then on, in every worker (each checks the marker
before serving a name as cache). In read-only mode nothing is recorded: the decision is
made again at each start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

from entrepot.registry.catalog import list_repositories
from entrepot.registry.epochs import EPOCHS, tags_epoch
from entrepot.storage import StorageDriver, StorageNotFound

log = logging.getLogger("entrepot.proxy")

RECORD = "entrepot/registry2-cache"
DECISION = f"{RECORD}/decision"
NAMES = f"{RECORD}/names"
_MARKER = "_cache"  # a name component never starts with "_": no repository is called so
MODES = ("auto", "cache", "pushed")
_SHOWN = 5  # names listed in the log line


def marker(name: str) -> str:
    return f"{NAMES}/{name}/{_MARKER}"


@dataclass(frozen=True)
class Decision:
    """What the plain-name repositories of the store are taken for, and why."""

    cached: tuple[str, ...]
    plain: int  # plain-name repositories looked at
    reason: str


class Registry2Store:
    """The plain names served as registry:2's cache (see the module)."""

    def __init__(
        self,
        driver: StorageDriver,
        *,
        mode: str = "auto",
        mirror: bool,
        routed: Collection[str] = (),
        readonly: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"registry2store mode {mode!r}; expected one of {MODES}")
        self.driver = driver
        self.mode = mode
        self.mirror = mirror
        self.routed = frozenset(routed)  # first name components that route to an upstream
        self.readonly = readonly
        self._cached: set[str] | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> frozenset[str]:
        """Decide (once per store) and load the cached names; every call after the first
        returns what the first loaded, less the names released since."""
        if self._cached is None:
            async with self._lock:
                if self._cached is None:
                    self._cached = set(await self._load_or_decide())
        return frozenset(self._cached)

    async def is_cache(self, name: str) -> bool:
        cached = self._cached if self._cached is not None else await self.open()
        if name not in cached:
            return False
        if self.readonly:
            return True
        try:
            # Another worker may have taken a push to it since.
            await self.driver.stat(marker(name))
        except StorageNotFound:
            if self._cached is not None:
                self._cached.discard(name)
            return False
        return True

    async def release(self, name: str) -> None:
        """``name`` was pushed to: a pushed repository from now on."""
        if self._cached is None or name not in self._cached:
            return
        if not self.readonly:
            with contextlib.suppress(StorageNotFound):
                await self.driver.delete(marker(name))
        self._cached.discard(name)
        log.info(
            "%s: a manifest was pushed to it; it is a pushed repository from now on, no "
            "longer registry:2's cache of the mirror",
            name,
        )

    # --- the decision ---------------------------------------------------------------------

    async def _load_or_decide(self) -> list[str]:
        if self.readonly or not await self._exists(DECISION):
            decision = await self.decide()
            if not self.readonly:
                await self._record(decision)
            self._log(decision)
            return list(decision.cached)
        cached = await self._recorded_names()
        if self.mode == "pushed" and cached:
            for name in cached:
                with contextlib.suppress(StorageNotFound):
                    await self.driver.delete(marker(name))
            log.info(
                "proxycache.registry2store is pushed: %d repositories recorded as registry:2's "
                "pull-through cache are pushed repositories again (%s)",
                len(cached),
                _some(cached),
            )
            return []
        return cached

    async def decide(self) -> Decision:
        """What this store's plain-name repositories are, from the store and the mode."""
        if self.mode == "pushed":
            return Decision((), 0, "proxycache.registry2store is pushed")
        if not self.mirror:
            return Decision((), 0, "no mirror upstream serves plain names")
        names = [
            name
            for name in await list_repositories(self.driver)
            if name.split("/", 1)[0] not in self.routed
        ]
        if not names:
            return Decision((), 0, "the store has no plain-name repositories")
        if self.mode == "auto" and await self._has_content(EPOCHS):
            return Decision(
                (),
                len(names),
                f"an earlier Entrepot wrote to this store ({EPOCHS}); set "
                "proxycache.registry2store: cache if its plain names were registry:2's "
                "pull-through cache",
            )
        # An earlier Entrepot wrote a tags epoch for each repository it created a tag in:
        # it took pushes under plain names, never cached there. Those stay pushed.
        cached = [name for name in names if not await self._exists(tags_epoch(name))]
        why = (
            "proxycache.registry2store is cache"
            if self.mode == "cache"
            else "a mirror upstream is configured (registry:2's proxy block) and registry:2 "
            "in proxy mode takes no pushes"
        )
        if len(cached) < len(names):
            why += f"; {len(names) - len(cached)} that an earlier Entrepot pushed to stay pushed"
        return Decision(tuple(cached), len(names), why)

    async def _exists(self, key: str) -> bool:
        try:
            await self.driver.stat(key)
        except StorageNotFound:
            return False
        return True

    async def _record(self, decision: Decision) -> None:
        # Markers first, the decision last: a crash in between decides again, the same way.
        for name in decision.cached:
            await self.driver.put_content(marker(name), b"registry:2 pull-through cache\n")
        record = {
            "registry2store": self.mode,
            "cached": len(decision.cached),
            "reason": decision.reason,
            "decided": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        await self.driver.put_content(DECISION, json.dumps(record, indent=1).encode() + b"\n")

    async def _recorded_names(self) -> list[str]:
        found: list[str] = []

        async def walk(prefix: str, name: str) -> None:
            try:
                children = await self.driver.list(prefix)
            except StorageNotFound:
                return
            if _MARKER in children:
                found.append(name)
            for child in children:
                if child != _MARKER:
                    await walk(f"{prefix}/{child}", f"{name}/{child}" if name else child)

        await walk(NAMES, "")
        return sorted(found)

    async def _has_content(self, prefix: str) -> bool:
        try:
            return bool(await self.driver.list(prefix))
        except StorageNotFound:
            return False

    def _log(self, decision: Decision) -> None:
        if decision.cached:
            log.info(
                "registry:2 store taken over: %d repositories under plain names (%s) were "
                "registry:2's pull-through cache (%s); they are served as the mirror's cache, "
                "tags revalidated upstream after tagttl (proxycache.registry2store: pushed "
                "keeps them as pushed repositories)",
                len(decision.cached),
                _some(decision.cached),
                decision.reason,
            )
        elif decision.plain:
            log.info(
                "%d repositories under plain names are kept as pushed repositories: %s",
                decision.plain,
                decision.reason,
            )


def _some(names: Collection[str]) -> str:
    shown = sorted(names)[:_SHOWN]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")
