"""A throwaway redis-server on 127.0.0.1 for the tests: its own port, its own directory,
no persistence, a password (as deployments have); stopped by killing the one process it
started."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from entrepot.storage.redisleases import RedisSettings

PASSWORD = "entrepot-test-redis"
START_TIMEOUT = 30.0


def redis_missing() -> bool:
    return shutil.which("redis-server") is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RedisServer:
    base: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def settings(self, db: int = 0) -> RedisSettings:
        return RedisSettings(host="127.0.0.1", port=self.port, password=PASSWORD, db=db)

    def config(self, db: int = 0) -> dict[str, object]:
        """registry:2's ``redis`` section for this server."""
        return {"addr": self.addr, "password": PASSWORD, "db": db}

    def start(self) -> RedisServer:
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        log = open(self.base / "redis.log", "wb")  # noqa: SIM115 - closed by the child
        try:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.base),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--requirepass",
                    PASSWORD,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not listen: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.base / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
