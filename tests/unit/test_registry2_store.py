"""What Entrepot takes the plain-name repositories of a store for, when it first opens it
(proxy/registry2_store.py): the decision, its record, and what later starts do with it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from entrepot.proxy.hostnames import host_aliases
from entrepot.proxy.registry2_store import DECISION, Registry2Store, marker
from entrepot.registry import layout
from entrepot.registry.epochs import CATALOG, tags_epoch
from entrepot.storage.filesystem import FilesystemDriver

DIGEST = "sha256:" + "ab" * 32
ROUTED = host_aliases("docker.io") + host_aliases("ghcr.io")


def _store(root: Path, *names: str) -> FilesystemDriver:
    """A store holding repositories `names` (a layer link each, as registry:2 writes them)."""
    for name in names:
        link = root / layout.layers_dir(name) / "sha256" / ("ab" * 32) / "link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(DIGEST)
    return FilesystemDriver(root)


def _opened(driver: FilesystemDriver, mode: str = "auto", **options: object) -> Registry2Store:
    settings: dict[str, object] = {"mirror": True, "routed": ROUTED, **options}
    return Registry2Store(driver, mode=mode, **settings)  # type: ignore[arg-type]


async def test_a_registry2_proxy_store_is_taken_for_its_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Names under a routed host (an Entrepot cache, docker.io/...) are never plain names.
    driver = _store(tmp_path, "library/nginx", "bitnami/redis", "docker.io/library/alpine")
    with caplog.at_level(logging.INFO, "entrepot.proxy"):
        cached = await _opened(driver).open()
    assert cached == {"library/nginx", "bitnami/redis"}
    assert (tmp_path / marker("library/nginx")).is_file()
    assert (tmp_path / DECISION).is_file()
    assert "2 repositories under plain names (bitnami/redis, library/nginx)" in caplog.text
    assert await _opened(driver).is_cache("library/nginx")
    assert not await _opened(driver).is_cache("team/app")


async def test_the_decision_is_made_once(tmp_path: Path) -> None:
    driver = _store(tmp_path, "library/nginx")
    assert await _opened(driver).open() == {"library/nginx"}
    # Pushed by Entrepot after the decision: never reclassified, in any mode but pushed.
    _store(tmp_path, "team/app")
    assert await _opened(driver).open() == {"library/nginx"}
    assert await _opened(driver, "cache").open() == {"library/nginx"}


@pytest.mark.parametrize(
    ("mode", "options", "names"),
    [
        ("pushed", {}, ("library/nginx",)),
        ("auto", {"mirror": False}, ("library/nginx",)),  # nothing to revalidate against
        ("auto", {}, ()),  # an empty store: later pushes are pushes
    ],
)
async def test_nothing_is_cache(
    tmp_path: Path, mode: str, options: dict[str, object], names: tuple[str, ...]
) -> None:
    driver = _store(tmp_path, *names)
    assert await _opened(driver, mode, **options).open() == frozenset()
    assert (tmp_path / DECISION).is_file()
    # Recorded: the store's plain names stay pushed when a mirror is configured later.
    _store(tmp_path, "library/redis")
    assert await _opened(driver).open() == frozenset()


async def test_a_store_an_earlier_entrepot_wrote_to(tmp_path: Path) -> None:
    driver = _store(tmp_path, "library/nginx", "team/app")
    await driver.put_content(CATALOG, b"1")
    await driver.put_content(tags_epoch("team/app"), b"1")  # it created a tag: a push
    assert await _opened(FilesystemDriver(tmp_path), "auto", readonly=True).open() == frozenset()
    # The operator knows better: registry:2's cache, but for what that Entrepot pushed.
    assert await _opened(driver, "cache").open() == {"library/nginx"}


async def test_pushed_releases_what_was_recorded(tmp_path: Path) -> None:
    driver = _store(tmp_path, "library/nginx")
    assert await _opened(driver).open() == {"library/nginx"}
    assert await _opened(driver, "pushed").open() == frozenset()
    assert not (tmp_path / marker("library/nginx")).exists()
    assert await _opened(driver).open() == frozenset()


async def test_read_only_storage_decides_without_writing(tmp_path: Path) -> None:
    driver = _store(tmp_path, "library/nginx")
    store = _opened(driver, readonly=True)
    assert await store.open() == {"library/nginx"}
    assert await store.is_cache("library/nginx")
    assert not (tmp_path / "entrepot").exists()


async def test_release_after_a_push(tmp_path: Path) -> None:
    driver = _store(tmp_path, "library/nginx", "library/redis")
    first, second = _opened(driver), _opened(driver)
    await first.open()
    await second.open()
    await first.release("library/nginx")
    assert not await first.is_cache("library/nginx")
    assert not await second.is_cache("library/nginx")  # another worker: the marker is gone
    assert await second.is_cache("library/redis")
