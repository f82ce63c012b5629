"""The entrepot command line (the server itself is not started here)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from entrepot import __version__
from entrepot.cli import main
from entrepot.oci.digest import Digest
from entrepot.registry import layout
from entrepot.registry.quarantine import JOURNAL, QUARANTINE
from entrepot.storage.filesystem import FilesystemDriver
from tests.unit.test_gc import blob, layer, manifest


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"entrepot {__version__}"


@pytest.mark.parametrize("how", ["positional", "option"])
def test_config_error_exits_1_with_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    path = tmp_path / "config.yml"
    path.write_text("version: 0.1\nstorage:\n  gcs:\n    bucket: b\n")
    argv = ["serve", str(path)] if how == "positional" else ["serve", "--config", str(path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("entrepot: config error: ")
    assert "storage driver 'gcs' is not supported yet" in err


def test_missing_config_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path / "missing.yml")]) == 1
    assert "entrepot: config error: cannot read config file" in capsys.readouterr().err


def test_unreadable_tls_certificate_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yml"
    path.write_text(
        "version: 0.1\nstorage: filesystem\nhttp:\n  tls:\n"
        f"    certificate: {tmp_path}/nope.crt\n    key: {tmp_path}/nope.key\n"
    )
    assert main(["serve", str(path)]) == 1
    assert "http.tls.certificate" in capsys.readouterr().err


def test_registry_configuration_path_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yml"
    path.write_text("version: 0.2\n")
    monkeypatch.setenv("REGISTRY_CONFIGURATION_PATH", str(path))
    assert main(["serve"]) == 1
    assert "unsupported version" in capsys.readouterr().err


def test_no_command_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["serve", "--workers", "0"]) == 2
    assert main(["serve", "a.yml", "--config", "b.yml"]) == 2


def test_json_log_formatter_writes_one_object_per_line() -> None:
    import json
    import logging

    from entrepot.log_setup import JsonFormatter

    record = logging.LogRecord(
        "entrepot.proxy", logging.WARNING, __file__, 1, "stale %s", ("x",), None
    )
    line = JsonFormatter({"service": "registry"}).format(record)
    assert json.loads(line) | {"time": "t"} == {
        "time": "t",
        "level": "warning",
        "logger": "entrepot.proxy",
        "msg": "stale x",
        "service": "registry",
    }


@pytest.mark.parametrize(
    ("argv", "environ", "workers"),
    [
        ([], {}, len(os.sched_getaffinity(0))),
        ([], {"ENTREPOT_WORKERS": ""}, len(os.sched_getaffinity(0))),  # empty: unset
        (["--workers", "3"], {}, 3),
        ([], {"ENTREPOT_WORKERS": "5"}, 5),
        (["--workers", "3"], {"ENTREPOT_WORKERS": "5"}, 3),
    ],
)
def test_serve_runs_one_worker_per_core_unless_told(
    argv: list[str], environ: dict[str, str], workers: int
) -> None:
    from entrepot.cli import _parser, workers_wanted

    assert workers_wanted(_parser().parse_args(["serve", *argv]).workers, environ) == workers


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "entrepot: ENTREPOT_WORKERS: not a number: 'abc'\n"),
        ("0", "entrepot: ENTREPOT_WORKERS: must be at least 1\n"),
    ],
)
def test_a_bad_workers_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    monkeypatch.setenv("ENTREPOT_WORKERS", value)
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == message


def test_garbage_collect_flags_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["garbage-collect", str(tmp_path / "missing.yml")]) == 1
    assert "entrepot: config error: cannot read config file" in capsys.readouterr().err
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/r\n")
    assert main(["garbage-collect", str(config), "--grace", "soon"]) == 2
    assert "invalid duration" in capsys.readouterr().err
    # A mistyped root names no store: refused, and nothing made there.
    assert main(["garbage-collect", str(config), "-d"]) == 1
    assert capsys.readouterr().err == (
        f"entrepot: storage.filesystem.rootdirectory {tmp_path}/r (in {config}) does not "
        "exist: no store to collect; check the path\n"
    )
    assert not (tmp_path / "r").exists()
    (tmp_path / "r").mkdir()
    assert main(["garbage-collect", str(config), "-d", "-m", "--grace", "30m"]) == 0
    out = capsys.readouterr().out
    assert "0 repositories, 0 manifests and 0 blobs marked" in out
    assert "dry run: nothing deleted" in out


def disk_config(where: Path, root: Path) -> Path:
    """A config file in ``where`` for a filesystem store at ``root``."""
    config = where / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n")
    return config


def test_garbage_collect_does_not_load_the_http_app(tmp_path: Path) -> None:
    # A collection needs the store and the retention rules: loading the app, Starlette
    # and auth would cost every run (and every scheduled cron job) for nothing.
    config = disk_config(tmp_path, tmp_path / "r")
    (tmp_path / "r").mkdir()
    code = (
        "import sys, entrepot.cli\n"
        f"code = entrepot.cli.main(['garbage-collect', {str(config)!r}])\n"
        "loaded = ('entrepot.root', 'entrepot.http.app', 'starlette.applications', 'bcrypt')\n"
        "print(code, sorted(m for m in loaded if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "0 []"


def test_the_program_collects_without_the_other_commands_modules(tmp_path: Path) -> None:
    # `entrepot garbage-collect` (entrepot.__main__) parses its own arguments: the server's
    # command line, TLS and the health check's modules were 0.03 s of every run's start;
    # multiprocessing (for S3's checks) 6 ms more.
    config = disk_config(tmp_path, tmp_path / "r")
    (tmp_path / "r").mkdir()
    code = (
        "import os, sys, entrepot.__main__ as program\n"
        "loaded = ('entrepot.cli', 'entrepot.cli_cache', 'entrepot.cli_health',\n"
        "          'multiprocessing')\n"
        "ended = os._exit\n"
        "def report(status):\n"
        "    print(status, sorted(m for m in loaded if m in sys.modules), flush=True)\n"
        "    ended(0)\n"
        "os._exit = report\n"
        "sys.argv = ['entrepot', *sys.argv[1:]]\n"
        "program.run()\n"
    )

    def program(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
        )

    done = program("garbage-collect", "--dry-run", str(config))
    assert "dry run: nothing deleted" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "0 []"
    usage = program("garbage-collect")  # CONFIG missing: argparse's usage error, status 2
    assert usage.stdout.strip().splitlines()[-1] == "2 []"
    assert "the following arguments are required: CONFIG" in usage.stderr
    helped = program("garbage-collect", "--help")
    assert "--delete-untagged" in helped.stdout
    assert helped.stdout.strip().splitlines()[-1] == "0 []"


def unreferenced_blob(root: Path) -> Path:
    """A blob no manifest references in the store at ``root``: its folder."""
    folder = root / "docker/registry/v2/blobs/sha256/ab" / ("ab" * 32)
    folder.mkdir(parents=True)
    (folder / "data").write_bytes(b"unreferenced")
    return folder


def collected_with(config: Path, patches: str, reported: str) -> str:
    """``entrepot garbage-collect --grace 0 CONFIG`` run as the program, with ``patches``
    applied first (code, before its imports); the last line it prints: its status and
    ``reported`` (an expression of the patches' names) as it ended. It deletes one blob."""
    code = (
        "import os, sys, entrepot.__main__ as program\n"
        f"{patches}"
        "ended = os._exit\n"
        "def report(status):\n"
        f"    print(status, {reported}, flush=True)\n"
        "    ended(0)\n"
        "os._exit = report\n"
        "sys.argv = ['entrepot', 'garbage-collect', '--grace', '0', sys.argv[1]]\n"
        "program.run()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(config)], capture_output=True, text=True, check=True
    )
    assert "deleted 1 blobs" in done.stdout
    return done.stdout.strip().splitlines()[-1]


def test_the_programs_mark_walks_in_children_started_as_it_began(tmp_path: Path) -> None:
    # Started before its imports (entrepot.__main__, earlywalks), the mark's three walk
    # children are ready when it begins: it starts none then, nor for the re-check (which
    # they would walk once they walked the mark, where a link came during it).
    root = tmp_path / "r"
    stray = unreferenced_blob(root)
    layers = root / "docker/registry/v2/repositories/team/app/_layers/sha256"
    layers.mkdir(parents=True)
    config = disk_config(tmp_path, root)
    last = collected_with(
        config,
        "from entrepot.storage import fschildren\n"
        "started = []\n"
        "spawn = fschildren._spawn\n"
        "async def noted(argv, **kwargs):\n"
        "    started.append(argv[0])\n"
        "    return await spawn(argv, **kwargs)\n"
        "fschildren._spawn = noted\n",
        reported="sorted(started)",
    )
    assert last == "0 []"
    assert not stray.exists()


def test_the_program_collects_begun_with_its_stdin_closed(tmp_path: Path) -> None:
    # As cron or a supervisor may start it: the walk children's pipes then take the
    # lowest numbers free, and a child must not close them as it sets up its own 0-2.
    root = tmp_path / "r"
    stray = unreferenced_blob(root)
    (root / "docker/registry/v2/repositories/team/app/_layers/sha256").mkdir(parents=True)
    config = disk_config(tmp_path, root)
    argv = [sys.executable, "-m", "entrepot", "garbage-collect", "--grace", "0", str(config)]
    done = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", *argv], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "deleted 1 blobs" in done.stdout
    assert not stray.exists()


def test_the_programs_mark_walks_begin_before_the_collectors_imports(tmp_path: Path) -> None:
    # Told their walks as a glance at the config file says (cli_gcargs), before the config
    # package and the collector's modules are imported; the driver reads each from the
    # child walking it, telling no child a mark walk again (nor the re-check's: no link
    # was counted during the mark, so it walks nothing: see gcrecheck).
    root = tmp_path / "r"
    stray = unreferenced_blob(root)
    (root / "docker/registry/v2/repositories/team/app/_layers/sha256").mkdir(parents=True)
    config = disk_config(tmp_path, root)
    last = collected_with(
        config,
        "from entrepot.storage import earlywalks\n"
        "noted = []\n"
        "tell = earlywalks.tell\n"
        "def told_early(argvs):\n"
        "    noted.append(('early', 'entrepot.config' in sys.modules, len(argvs)))\n"
        "    return tell(argvs)\n"
        "earlywalks.tell = told_early\n"
        "import entrepot.storage.fschildren as fschildren\n"
        "told_later = []\n"
        "told = fschildren._told\n"
        "async def told_now(spare, argv):\n"
        "    told_later.append(argv[3].rpartition(':')[2])\n"
        "    return await told(spare, argv)\n"
        "fschildren._told = told_now\n",
        reported="noted, sorted(told_later)",
    )
    assert last == "0 [('early', False, 3)] []"
    assert not stray.exists()


def test_the_program_collects_the_store_its_config_names_when_edited_as_its_walks_began(
    tmp_path: Path,
) -> None:
    # The walks are told what a glance at the config file says, and the config is then
    # read whole, once: edited in between, the collection is of the store it then names,
    # with walks of its own, and the other store is left alone.
    strays = [unreferenced_blob(tmp_path / name) for name in ("first", "second")]
    config = disk_config(tmp_path, tmp_path / "first")
    last = collected_with(
        config,
        "from entrepot.storage import earlywalks\n"
        "tell = earlywalks.tell\n"
        "def told_then_edited(argvs):\n"
        "    told = tell(argvs)\n"
        "    with open(sys.argv[-1]) as f: text = f.read()\n"
        "    with open(sys.argv[-1], 'w') as f: f.write(text.replace('/first', '/second'))\n"
        "    return told\n"
        "earlywalks.tell = told_then_edited\n",
        reported="'second' in open(sys.argv[-1]).read()",
    )
    assert last == "0 True"  # the file was edited as the walks began
    assert (strays[0] / "data").exists()
    assert not strays[1].exists()


def test_the_program_tells_the_walks_the_store_an_override_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A REGISTRY_STORAGE_* variable may name another store than the file: the walks are
    # told once the config is read whole, and walk that one.
    strays = [unreferenced_blob(tmp_path / name) for name in ("file", "variable")]
    monkeypatch.setenv("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", str(tmp_path / "variable"))
    last = collected_with(
        disk_config(tmp_path, tmp_path / "file"),
        "from entrepot.storage import earlywalks\n"
        "roots = []\n"
        "tell = earlywalks.tell\n"
        "def noted(argvs):\n"
        "    roots.extend(sorted({argv[1].rpartition('/')[2] for argv in argvs}))\n"
        "    return tell(argvs)\n"
        "earlywalks.tell = noted\n",
        reported="roots",
    )
    assert last == "0 ['variable']"
    assert (strays[0] / "data").exists()
    assert not strays[1].exists()


def test_the_program_puts_back_what_an_interrupted_run_left_aside_before_marking(
    tmp_path: Path,
) -> None:
    # An interrupted collection left a tagged image's manifest and layer aside (journal
    # listed). The next run's walks begin before it puts them back (cli_gcargs.head_start):
    # the manifest they could not read is read once it is back, before the mark decides,
    # so the image stays whole.
    root = tmp_path / "r"
    driver = FilesystemDriver(root)

    async def store() -> tuple[Digest, Digest]:
        kept = await layer(driver, "team/app", b"a layer of a tagged image")
        image = await manifest(driver, "team/app", [kept], tag="v1")
        await blob(driver, b"unreferenced")
        return kept, image

    aside = asyncio.run(store())
    for digest in aside:
        os.rename(
            driver.local_path(layout.blob_data(digest)),
            driver.local_path(f"{layout.blob_dir(digest)}/{QUARANTINE}"),
        )
    journal = driver.local_path(JOURNAL)
    os.makedirs(os.path.dirname(journal), exist_ok=True)  # the links counted are there
    Path(journal).write_text("\n".join(map(str, aside)))

    last = collected_with(disk_config(tmp_path, root), "", reported="'done'")

    assert last == "0 done"
    for digest in aside:
        assert Path(driver.local_path(layout.blob_data(digest))).exists()
    assert not Path(journal).exists()


def test_debug_address_in_use_exits_1_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(prefix: str | None = None) -> str:
        made.append(real_mkdtemp(prefix=prefix, dir=tmp_path))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)  # where the workers' metrics dir is made
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = tmp_path / "config.yml"
        path.write_text(
            f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:{port}\n"
            "    prometheus:\n      enabled: true\n"
        )
        assert main(["serve", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on http.debug.addr 127.0.0.1:{port}: it is already in use" in err
    # The metrics directory is gone, and the variable with it.
    assert len(made) == 1 and Path(made[0]).name.startswith("entrepot-metrics-")
    assert not Path(made[0]).exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_garbage_collect_takes_its_grace_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A dry run must list what the server's scheduled run (garbagecollect.grace) deletes.
    stray = tmp_path / "r/docker/registry/v2/blobs/sha256/ab" / ("ab" * 32) / "data"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"written just now, referenced by nothing")
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/r\n"
        "garbagecollect:\n  grace: 0s\n"
    )
    assert main(["garbage-collect", str(config), "--dry-run"]) == 0
    assert f"blob eligible for deletion: sha256:{'ab' * 32}" in capsys.readouterr().out
    assert main(["garbage-collect", str(config), "--dry-run", "--grace", "1h"]) == 0
    assert "1 unreferenced blobs" in capsys.readouterr().out  # kept: the flag wins


def test_a_storage_error_names_the_s3_bucket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\nstorage:\n  s3:\n    bucket: regbucket\n    region: us-east-1\n"
        "    regionendpoint: http://127.0.0.1:9\n    accesskey: a\n    secretkey: s\n"
    )
    assert main(["garbage-collect", str(config), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("entrepot: storage error in storage.s3 bucket regbucket: "), err
