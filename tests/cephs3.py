"""A throwaway single-node Ceph cluster with radosgw: a real S3 server for the tests.

Everything lives under one temp dir: one ceph-mon, one ceph-osd on ``memstore`` (data in
RAM), pool size 1, no cephx, and ``radosgw`` with the beast frontend on 127.0.0.1. It
starts in a few seconds (see ../shared/design.md, "Real parts", for why each setting is
there) and is stopped by killing the three processes it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrepot.storage.s3 import S3Settings

ACCESS_KEY = "entrepot-test-access"
SECRET_KEY = "entrepot-test-secret-0123456789abcdef"
REGION = "us-east-1"
START_TIMEOUT = 60.0
CEPH_PROGRAMS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool")


def ceph_missing() -> list[str]:
    """The Ceph programs not installed (scripts/install-test-deps.sh installs them)."""
    return [p for p in CEPH_PROGRAMS if shutil.which(p, path=_PATH) is None]


_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin"


def _name(proc: subprocess.Popen[bytes]) -> str:
    return str(proc.args[0]) if isinstance(proc.args, list) else str(proc.args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class CephS3:
    """A running radosgw; ``endpoint`` is its http://127.0.0.1:PORT URL."""

    base: Path
    rgw_port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.rgw_port}"

    @property
    def conf(self) -> Path:
        return self.base / "ceph.conf"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, PATH=_PATH, CEPH_CONF=str(self.conf))
        env.pop("AWS_CA_BUNDLE", None)
        return env

    def _run(self, *args: str) -> str:
        proc = subprocess.run(
            [*args, "-c", str(self.conf)],
            env=self._env(),
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')[-2000:]}\n{self.logs()}"
            )
        return proc.stdout.decode()

    def _spawn(self, *args: str) -> None:
        log = open(self.base / "log" / f"{args[0]}.out", "wb")  # noqa: SIM115 - closed by the child
        try:
            self.procs.append(
                subprocess.Popen(
                    [*args, "-f", "-c", str(self.conf)],
                    env=self._env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        finally:
            log.close()

    def logs(self) -> str:
        out = []
        for path in sorted((self.base / "log").glob("*")):
            text = path.read_text(errors="replace")
            out.append(f"--- {path.name} ---\n{text[-3000:]}")
        return "\n".join(out)

    def start(self) -> CephS3:
        base = self.base
        for sub in ("mon/ceph-a", "osd/ceph-0", "run", "log", "rgw"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        mon_port = _free_port()
        self.rgw_port = _free_port()
        fsid = str(uuid.uuid4())
        self.conf.write_text(
            f"""[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{mon_port}
public_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_objectstore = memstore
memstore_device_bytes = 8589934592
osd_crush_chooseleaf_type = 0
paxos_propose_interval = 0.05
run_dir = {base}/run
admin_socket = {base}/run/$name.asok
pid_file = {base}/run/$name.pid
log_file = {base}/log/$name.log
mon_data = {base}/mon/$cluster-$id
osd_data = {base}/osd/$cluster-$id
keyring = /dev/null

[client]
ms_mon_client_mode = crc
ms_client_mode = crc

[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:{self.rgw_port} tcp_nodelay=1
rgw_data = {base}/rgw
rgw_dns_name = 127.0.0.1
"""
        )
        try:
            self._start_daemons(fsid, mon_port)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_daemons(self, fsid: str, mon_port: int) -> None:
        base = self.base
        monmap = str(base / "monmap")
        subprocess.run(
            [
                "monmaptool",
                "--create",
                "--fsid",
                fsid,
                "--addv",
                "a",
                f"[v2:127.0.0.1:{mon_port}]",
                monmap,
            ],
            env=self._env(),
            capture_output=True,
            check=True,
        )
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        self._spawn("ceph-mon", "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("ceph", "osd", "new", osd_uuid).strip()
        self._run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self._spawn("ceph-osd", "-i", osd_id)
        self._spawn("radosgw", "-n", "client.rgw.a")
        deadline = time.monotonic() + START_TIMEOUT
        while not _port_open(self.rgw_port):
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{_name(proc)} exited ({proc.returncode})\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"radosgw did not listen within {START_TIMEOUT}s\n{self.logs()}")
            time.sleep(0.05)
        self._run(
            "radosgw-admin",
            "user",
            "create",
            "--uid=test",
            "--display-name=test",
            f"--access-key={ACCESS_KEY}",
            f"--secret-key={SECRET_KEY}",
        )

    def collect_garbage(self) -> None:
        """Free the space of deleted objects now: radosgw hands their data to its garbage
        collector, which waits two hours by default, and the memstore OSD holds it in RAM
        meanwhile (a test that writes gigabytes calls this after deleting them)."""
        self._run("radosgw-admin", "gc", "process", "--include-all")

    def stop(self) -> None:
        """radosgw, then the OSD, then the monitor: each stops at once while the ones it
        talks to are still there."""
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()


def s3_client(server: CephS3) -> Any:
    """A botocore S3 client on ``server`` (for bucket set-up and checks the driver has no
    call for, such as listing multipart uploads)."""
    import botocore.session  # only the tests that use S3 need it
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}),
    )


def driver_settings(server: CephS3, bucket: str, rootdirectory: str) -> S3Settings:
    """Settings for a driver on ``server`` with the test user, path-style, 5 MiB parts
    (the smallest S3 allows, so multipart paths run on small data)."""
    return S3Settings(
        bucket=bucket,
        region=REGION,
        endpoint=server.endpoint,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        path_style=True,
        rootdirectory=rootdirectory,
        chunksize=5 * 1024 * 1024,
    )
