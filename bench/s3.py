"""Group ``s3``: registry:2 and Entrepot on one S3 server (Ceph's radosgw), side by side.

One throwaway radosgw (``tests/cephs3.py``, the tests' own launcher) serves both servers,
one after the other, each with its own buckets and ``storage.redirect.disable`` (blob
bytes go through the server, as the filesystem rows measure): pushes of the layer
(monolithic and in chunks), blob GET of it, manifest GET by tag and tags list of an image
pushed under ``s3_tags`` tags. Then cold pull-through of the upstream's layer by the pull
clients over two replicas of each on one bucket, behind Debian's nginx in round robin
(``tests/e2e/loadbalancer.py``); Entrepot's replicas share the fill through
registry:2's ``redis`` section (a throwaway redis-server), registry:2's have nothing to
share it with. Upstream bytes come from the upstream registry:2's access log.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from botocore.exceptions import ClientError
from tests.cephs3 import ACCESS_KEY, REGION, SECRET_KEY, CephS3, ceph_missing, s3_client
from tests.e2e.loadbalancer import Nginx, nginx_binary
from tests.redisserver import RedisServer, redis_missing

from bench import clients
from bench.fixtures import MANIFEST_ACCEPT, OCI_MANIFEST, PROXIED_REPO, Blob, Image, make_image
from bench.servers import Server, process_rss, running
from bench.workloads import (
    Rows,
    ServerRun,
    Settings,
    Shared,
    _expect,
    _progress,
    check_blob,
    check_tags,
)

ROOT = "/registry"
# One push per mode, not the filesystem rows' median of 3: radosgw's OSD keeps the data in
# RAM, and a 256 MiB push stores its bytes twice (the upload, then the blob).
PUSH_REPEATS = 1
OSD_RSS_LIMIT = 6 << 30
# Entrepot on S3 checks the bucket before it answers; under heavy load that took over a
# minute here.
START_TIMEOUT = 180.0
FIRST_VARIANT = 100  # the push layer's variants: other digests than the filesystem pushes'
REPLICAS = 2
APP_REPO = "bench/s3app"
# aws-sdk-go (registry:2's S3 client) refuses to start when AWS_CA_BUNDLE names a file;
# it ignores an empty value.
REGISTRY2_ENV = {"AWS_CA_BUNDLE": ""}


def missing_tools() -> list[str]:
    missing = [f"{p} (scripts/install-test-deps.sh)" for p in ceph_missing()]
    if redis_missing():
        missing.append("redis-server (apt-get install redis-server)")
    if nginx_binary() is None:
        missing.append("nginx (apt-get install nginx)")
    return missing


def storage_section(ceph: CephS3, bucket: str) -> dict[str, Any]:
    """registry:2's ``storage`` keys for ``bucket``, the same for both servers."""
    return {
        "s3": {
            "accesskey": ACCESS_KEY,
            "secretkey": SECRET_KEY,
            "region": REGION,
            "regionendpoint": ceph.endpoint,
            "forcepathstyle": True,
            "bucket": bucket,
            "rootdirectory": ROOT,
            "secure": False,
            "v4auth": True,
        },
        "redirect": {"disable": True},
    }


def blob_key(digest: str) -> str:
    algorithm, encoded = digest.split(":")
    return f"{ROOT.strip('/')}/docker/registry/v2/blobs/{algorithm}/{encoded[:2]}/{encoded}/data"


@dataclass
class S3Run:
    """The ``s3`` rows of one server kind; ``rows`` as ServerRun's."""

    kind: str
    settings: Settings
    shared: Shared
    ceph: CephS3
    redis: RedisServer
    tags: int

    def __post_init__(self) -> None:
        # ServerRun's wrk, profiling and progress helpers, on rows of their own
        self.base = ServerRun(self.kind, self.settings, self.shared)
        self.rows: Rows = self.base.rows
        self.notes = self.base.notes
        self.s3 = s3_client(self.ceph)

    def _server(self, bucket: str, name: str, proxy_url: str | None = None) -> Server:
        s = self.settings
        extra = {"redis": self.redis.config()} if self.kind == "entrepot" and proxy_url else None
        env = dict(REGISTRY2_ENV) if self.kind == "registry2" else {}
        if proxy_url:
            # Replicas as on machines of their own: each its own temp directory, where
            # Entrepot keeps the local copy of a fill its clients share.
            tmp = s.workdir / f"tmp-{name}"
            tmp.mkdir(parents=True, exist_ok=True)
            env["TMPDIR"] = str(tmp)
        return Server(
            self.kind,
            root=s.datadir / f"s3-{name}",  # unused: the data goes to the bucket
            workdir=s.workdir / "logs",
            cpus=s.server_cpus,
            workers=s.workers,
            proxy_url=proxy_url,
            storage=storage_section(self.ceph, bucket),
            extra=extra,
            env=env or None,
            name=name,
        )

    def _bucket(self, purpose: str) -> str:
        name = f"bench-{purpose}-{self.kind}"
        self.s3.create_bucket(Bucket=name)
        return name

    def _empty(self, bucket: str) -> None:
        """Delete the bucket's objects and uploads: radosgw keeps them in RAM (memstore)."""
        for upload in self.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            with contextlib.suppress(ClientError):
                self.s3.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        self._collect_garbage()

    def run(self) -> None:
        bucket = self._bucket("push")
        try:
            with running(self._server(bucket, f"{self.kind}-s3"), START_TIMEOUT) as server:
                _progress(f"{self.kind}: S3 pushes and reads on {server.url} (bucket {bucket})")
                pushed = self._push_rows(server)
                image = self._seed_image(server, pushed)
                self._read_rows(server, image)
                if self.kind == "entrepot":
                    self._blob_get_floor(bucket, image.layer)
        finally:
            self._empty(bucket)
        if self.shared.upstream is not None:
            bucket = self._bucket("pull")
            try:
                self._pull_rows(bucket)
            finally:
                self._empty(bucket)

    def _push_rows(self, server: Server) -> tuple[str, Blob]:
        """The push rows; returns the repository and the blob of the last push."""
        s = self.settings
        layer = self.shared.push_layer
        modes: list[tuple[str, int | None]] = [
            ("s3_push_monolithic", None),
            ("s3_push_chunked", s.chunk),
        ]
        variant = FIRST_VARIANT
        last = ("", Blob("", 0))
        with clients.pinned(s.client_cpus), httpx.Client(timeout=600) as c:
            for key, chunk in modes:
                results = []
                for i in range(PUSH_REPEATS):
                    digest = layer.variant(variant)
                    variant += 1
                    repo = f"bench/{key}-{i}"
                    with self.base._profiled(key if i == 0 else "", server, 5):
                        results.append(clients.push_blob(c, server.url, repo, layer, digest, chunk))
                    self._collect_garbage()
                    last = (repo, Blob(digest, layer.size))
                speeds = sorted(r.bytes_per_s for r in results)
                self.rows[key] = {
                    "value": speeds[len(speeds) // 2],
                    "runs_seconds": [round(r.seconds, 3) for r in results],
                    "size": layer.size,
                }
                _progress(
                    f"  {self.kind:9} {key:18} {speeds[len(speeds) // 2] / 1e6:,.0f} MB/s "
                    f"(runs: {', '.join(f'{r.seconds:.2f}s' for r in results)})"
                )
        return last

    def _seed_image(self, server: Server, pushed: tuple[str, Blob]) -> Image:
        """An image whose layer is the last pushed blob (mounted from its repository),
        tagged ``self.tags`` times in APP_REPO, pushed through the server (not timed)."""
        source, layer = pushed
        image = make_image(layer, "s3")
        base = f"{server.url}/v2/{APP_REPO}"
        with httpx.Client(timeout=120) as c:
            r = c.post(f"{base}/blobs/uploads/", params={"mount": layer.digest, "from": source})
            _expect(r.status_code == 201, f"{self.kind}: mount answered {r.status_code} {r.text}")
            r = c.post(f"{base}/blobs/uploads/")
            _expect(r.status_code == 202, f"{self.kind}: POST answered {r.status_code}")
            url = httpx.URL(server.url).join(r.headers["location"])
            r = c.put(url.copy_add_param("digest", image.config_blob.digest), content=image.config)
            _expect(r.status_code == 201, f"{self.kind}: config PUT answered {r.status_code}")

        def tag(name: str) -> int:
            with httpx.Client(timeout=120) as c:
                headers = {"Content-Type": OCI_MANIFEST}
                r = c.put(f"{base}/manifests/{name}", content=image.manifest, headers=headers)
                return r.status_code

        names = ["latest"] + [f"v{i:04d}" for i in range(1, self.tags)]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(tag, names))
        _expect(statuses == [201] * len(names), f"{self.kind}: manifest PUTs: {set(statuses)}")
        return image

    def _read_rows(self, server: Server, image: Image) -> None:
        s = self.settings
        base = f"{server.url}/v2/{APP_REPO}"
        blob = f"{base}/blobs/{image.layer.digest}"
        with httpx.Client(timeout=120) as c:
            r = c.get(f"{base}/manifests/latest", headers={"Accept": MANIFEST_ACCEPT})
            _expect(
                r.status_code == 200 and r.content == image.manifest,
                f"{self.kind}: S3 manifest GET answered {r.status_code} {r.text[:200]}",
            )
            check_tags(c, f"{self.kind} on S3", base, self.tags)
            check_blob(c, f"{self.kind} on S3", base, image.layer)
        get_m = self.base._script("manifest-get", "GET", MANIFEST_ACCEPT)
        get = self.base._script("get", "GET")
        self.base._wrk("s3_manifest_get", server, f"{base}/manifests/latest", get_m, s.connections)
        self.base._wrk("s3_tags_list", server, f"{base}/tags/list", get, s.connections)
        self.base._wrk("s3_blob_get_1", server, blob, get, 1)

    def _blob_get_floor(self, bucket: str, layer: Blob) -> None:
        """Row ``s3_blob_get_floor``: the blob GET row's downloads from a bare Granian app
        that streams the same object from S3 through obstore (bench/s3floor.py): what
        Entrepot's stack allows at most, measured beside the row."""
        s = self.settings
        where = f"{self.ceph.endpoint} {bucket} {blob_key(layer.digest)}"
        floor = Server(
            "s3floor",
            root=s.workdir / "s3floor",
            workdir=s.workdir / "logs",
            cpus=s.server_cpus,
            workers=s.workers,
            env={"ENTREPOT_BENCH_S3FLOOR": where},
        )
        with running(floor):
            with httpx.stream("GET", f"{floor.url}/blob", timeout=120) as r:
                size = sum(len(chunk) for chunk in r.iter_raw())
            _expect(size == layer.size, f"s3floor sent {size} bytes, not {layer.size}")
            get = self.base._script("get", "GET")
            self.base._wrk("s3_blob_get_floor", floor, f"{floor.url}/blob", get, 1)

    def _pull_rows(self, bucket: str) -> None:
        s = self.settings
        upstream, image = self.shared.upstream, self.shared.upstream_image
        assert upstream is not None and image is not None
        layer = image.layer
        replicas = [
            self._server(bucket, f"{self.kind}-pull-{n}", proxy_url=upstream.url)
            for n in range(REPLICAS)
        ]
        with contextlib.ExitStack() as stack:
            for replica in replicas:
                stack.enter_context(running(replica, START_TIMEOUT))
            lb_dir = Path(tempfile.mkdtemp(prefix="nginx-", dir=s.workdir))
            balancer = Nginx(lb_dir, [r.url.removeprefix("http://") for r in replicas]).start()
            stack.callback(balancer.stop)
            _progress(f"{self.kind}: S3 cold pull-through, {REPLICAS} replicas, {balancer.url}")
            url = f"{balancer.url}/v2/{PROXIED_REPO}/blobs/{layer.digest}"
            if self.kind == "entrepot":
                self._pull_floor(f"{upstream.url}/v2/{PROXIED_REPO}/blobs/{layer.digest}")
            key = blob_key(layer.digest)
            self.base.cold_pull(
                "s3_pull_cold", replicas[0], url, lambda: self._has(bucket, key), replicas=REPLICAS
            )

    def _pull_floor(self, upstream_blob: str) -> None:
        """Row ``s3_pull_floor``: the pull clients fetching the layer straight from the
        upstream, at once (no cache, no S3, no load balancer): what moving their bytes
        takes on this machine at the moment, a floor for the cold pull rows."""
        s = self.settings
        dl = clients.parallel_downloads(upstream_blob, s.pull_clients, s.client_cpus)
        size = self.shared.upstream_image.layer.size if self.shared.upstream_image else 0
        _expect(
            all(code == 200 for code in dl.statuses) and all(n == size for n in dl.sizes),
            f"upstream downloads: {dl.statuses} {dl.sizes}",
        )
        self.rows["s3_pull_floor"] = {"value": dl.seconds, "client_seconds": dl.client_seconds}
        _progress(f"  floor: {s.pull_clients} clients from the upstream itself {dl.seconds:.2f} s")

    def _collect_garbage(self) -> None:
        """Free what radosgw deleted or replaced now, not hours later (its default): the
        OSD keeps every byte in RAM, and every push leaves its upload's objects deleted.
        Refuse to go on past OSD_RSS_LIMIT (the machine is shared)."""
        self.ceph._run("radosgw-admin", "gc", "process", "--include-all")
        osd = process_rss(self.ceph.procs[1].pid)  # mon, osd, radosgw
        _expect(
            osd < OSD_RSS_LIMIT,
            f"s3: ceph-osd holds {osd / 1e9:.1f} GB of RAM (limit {OSD_RSS_LIMIT / 1e9:.0f} GB): "
            "stopping before the machine runs out of memory",
        )

    def _has(self, bucket: str, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError:  # 404 until it is there
            return False
        return True


def run_s3(
    kinds: tuple[str, ...],
    settings: Settings,
    shared: Shared,
    tags: int,
    results: dict[str, Rows],
    notes: list[str],
) -> None:
    """Start radosgw and redis-server, then each server kind's S3 rows in turn (into
    ``results[kind]``, beside its other rows)."""
    work = Path(tempfile.mkdtemp(prefix="s3-", dir=settings.workdir))
    ceph = CephS3(work / "ceph").start()
    redis = RedisServer(work / "redis")
    try:
        redis.start()
        _progress(f"s3: {radosgw_version()} on {ceph.endpoint}, redis-server on {redis.addr}")
        for kind in kinds:
            run = S3Run(kind, settings, shared, ceph, redis, tags)
            try:
                run.run()
            finally:
                results.setdefault(kind, {}).update(run.rows)
                notes.extend(run.notes)
    finally:
        redis.stop()
        ceph.stop()


def radosgw_version() -> str:
    """``radosgw --version``'s first words, e.g. "ceph version 16.2.15"."""
    out = subprocess.run(["radosgw", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().split(" (")[0] or "radosgw (version unknown)"
