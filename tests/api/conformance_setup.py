"""The OCI distribution-spec conformance suite (v1.1.1, ``conformance/``), ported: its test
data (``setup.go``, ``image.go``) and a runner that replays a workflow's checks in order.

The suite is a sequence of named checks ("g.Specify") per workflow, each depending on what
the earlier ones did. A port test is parametrized by check name and replays the workflow up
to and including that check against a fresh registry, so every check is its own test, named
as in the suite, and a failure names the check (or the earlier one) that broke.

The data mirrors the suite's: one config and one manifest per workflow (each descriptor
carrying ``data`` and the unknown ``newUnspecifiedField`` the suite adds to test that
unknown fields are kept), a small gzip tarball as the layer, and the referrer artifacts
of the content discovery workflow.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import os
import tarfile
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.oci_client import OCI_INDEX, OCI_MANIFEST, OciClient, local_client, sha256

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCTET_STREAM = "application/octet-stream"

# The suite's namespace (OCI_NAMESPACE) and its default cross-mount namespace.
NAMESPACE = "myorg/myrepo"
CROSSMOUNT_NAMESPACE = f"conformance-{uuid.uuid4()}"

TEST_TAG_NAME = "tagtest0"
EMPTY_LAYER_TEST_TAG = "emptylayer"
NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"
INVALID_MANIFEST_CONTENT = b"blablabla"
DUMMY_DIGEST = sha256(b"hello world")
ANNOTATION_KEY = "org.opencontainers.conformance.test"
ARTIFACT_TYPE_A = "application/vnd.nhl.peanut.butter.bagel"
ARTIFACT_TYPE_B = "application/vnd.nba.strawberry.jam.croissant"
ARTIFACT_TYPE_INDEX = "application/vnd.food.stand"
ARTIFACT_TYPE_FILTER = "artifactType"

# The suite's error code list: a 400 body must carry one of these.
SUITE_ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "MANIFEST_UNVERIFIED",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "TAG_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
    }
)


@dataclass(frozen=True)
class SuiteBlob:
    content: bytes

    @property
    def digest(self) -> str:
        return sha256(self.content)

    @property
    def length(self) -> str:
        return str(len(self.content))


def _marshal(value: Any) -> bytes:
    # Go's json.MarshalIndent(value, "", "\t"): the bytes are what gets digested.
    return json.dumps(value, indent="\t").encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def descriptor(media_type: str, content: bytes, **extra: Any) -> dict[str, Any]:
    """A descriptor as the suite marshals it: the unknown field is always there (null)."""
    body: dict[str, Any] = {
        "mediaType": media_type,
        "digest": sha256(content),
        "size": len(content),
    }
    body.update(extra)
    body.setdefault("newUnspecifiedField", None)
    return body


def _layer_tarball() -> bytes:
    """A small gzip tarball with one text file (the suite embeds one like it)."""
    text = b"you bothered to find out what was in here. Congratulations!\n"
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("test.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return gzip.compress(tar_bytes.getvalue(), mtime=0)


def _config(author: str) -> bytes:
    return _marshal(
        {
            "author": author,
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    )


WORKFLOWS = 5  # one config and manifest per workflow index the suite uses (0..4)
LAYER = SuiteBlob(_layer_tarball())
LAYERS = [descriptor(OCI_LAYER, LAYER.content)]
# A fresh author per run gives configs (and so manifests) digests no earlier run used.
CONFIGS = [SuiteBlob(_config(uuid.uuid4().hex[:16])) for _ in range(WORKFLOWS)]
MANIFESTS = [
    SuiteBlob(
        _marshal(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(
                    OCI_CONFIG,
                    config.content,
                    data=_b64(config.content),
                    newUnspecifiedField=_b64(b"hello world"),
                ),
                "layers": LAYERS,
            }
        )
    )
    for config in CONFIGS
]

# Push workflow: an image manifest with no layers and no mediaType field.
EMPTY_LAYER_MANIFEST = SuiteBlob(
    _marshal(
        {
            "schemaVersion": 2,
            "config": descriptor(
                OCI_CONFIG,
                CONFIGS[1].content,
                data=_b64(CONFIGS[1].content),
                newUnspecifiedField=_b64(b"hello world"),
            ),
            "layers": [],
        }
    )
)

TEST_BLOB_A = SuiteBlob(os.urandom(42))
TEST_BLOB_B = SuiteBlob(os.urandom(42))
# The suite's chunked upload: the first chunk is one byte longer than half.
CHUNK_1 = TEST_BLOB_B.content[: 42 // 2 + 1]
CHUNK_2 = TEST_BLOB_B.content[42 // 2 + 1 :]
CHUNK_1_RANGE = f"0-{len(CHUNK_1) - 1}"
CHUNK_2_RANGE = f"{len(CHUNK_1)}-{len(TEST_BLOB_B.content) - 1}"

# Content discovery: artifacts whose subject is MANIFESTS[4] (C's subject, MANIFESTS[3],
# is never pushed in that workflow).
EMPTY_JSON = SuiteBlob(b"{}")
EMPTY_JSON_DESCRIPTOR = descriptor(OCI_EMPTY, EMPTY_JSON.content)
REF_BLOB_A = SuiteBlob(b"NHL Peanut Butter on my NHL bagel")
REF_BLOB_B = SuiteBlob(b"NBA Strawberry Jam on my NBA croissant")


def _subject(manifest: SuiteBlob) -> dict[str, Any]:
    return descriptor(OCI_MANIFEST, manifest.content)


def _artifact(
    artifact_type: str,
    blob: SuiteBlob,
    *,
    in_config: bool,
    subject: SuiteBlob = MANIFESTS[4],
    annotation: str | None = None,
) -> SuiteBlob:
    """A referrer of ``subject`` whose type is either its config's media type
    (``in_config``) or its artifactType with an empty config, the blob its one layer."""
    typed = descriptor(artifact_type, blob.content)
    body: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if in_config:
        body.update(config=typed, layers=[EMPTY_JSON_DESCRIPTOR])
    else:
        body.update(artifactType=artifact_type, config=EMPTY_JSON_DESCRIPTOR, layers=[typed])
    body["subject"] = _subject(subject)
    if annotation is not None:
        body["annotations"] = {ANNOTATION_KEY: annotation}
    return SuiteBlob(_marshal(body))


REFS_A_CONFIG = _artifact(ARTIFACT_TYPE_A, REF_BLOB_A, in_config=True, annotation="test config a")
REFS_B_CONFIG = _artifact(ARTIFACT_TYPE_B, REF_BLOB_B, in_config=True, annotation="test config b")
REFS_A_LAYER = _artifact(ARTIFACT_TYPE_A, REF_BLOB_A, in_config=False, annotation="test layer a")
REFS_B_LAYER = _artifact(ARTIFACT_TYPE_B, REF_BLOB_B, in_config=False, annotation="test layer b")
REFS_C_LAYER = _artifact(ARTIFACT_TYPE_B, REF_BLOB_B, in_config=False, subject=MANIFESTS[3])
REFS_INDEX = SuiteBlob(
    _marshal(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": ARTIFACT_TYPE_INDEX,
            "manifests": [
                descriptor(OCI_MANIFEST, REFS_A_CONFIG.content),
                descriptor(OCI_MANIFEST, REFS_A_LAYER.content),
            ],
            "subject": _subject(MANIFESTS[4]),
            "annotations": {ANNOTATION_KEY: "test index"},
        }
    )
)
# The annotation each referrer of MANIFESTS[4] must be listed with.
ANNOTATION_VALUES = {
    REFS_A_CONFIG.digest: "test config a",
    REFS_B_CONFIG.digest: "test config b",
    REFS_A_LAYER.digest: "test layer a",
    REFS_B_LAYER.digest: "test layer b",
    REFS_INDEX.digest: "test index",
}


@dataclass
class Run:
    """What the suite keeps in package variables while a workflow runs."""

    client: OciClient
    name: str = NAMESPACE
    crossmount: str = CROSSMOUNT_NAMESPACE
    # OCI_DELETE_MANIFEST_BEFORE_BLOBS: the suite's default, true.
    delete_manifest_before_blobs: bool = True
    last: httpx.Response | None = None
    prev: httpx.Response | None = None
    tag: str = ""
    tag_list: list[str] = field(default_factory=list)
    num_tags: int = 0
    empty_layer_manifest_ref: str = ""
    blob_delete_allowed: bool = True

    async def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        """The suite's reggie request: ``<name>`` in the path is the namespace. The suite
        also sets Content-Length; Go's client sends the body's real length whatever that
        header says, and so does httpx."""
        path = path.replace("<name>", name or self.name)
        return await self.client.http.request(
            method, path, params=params, headers=headers, content=body
        )

    async def push_blob(self, blob: SuiteBlob) -> httpx.Response:
        """The suite's setup push: POST, then PUT to the session with the digest."""
        started = await self.request("POST", "/v2/<name>/blobs/uploads/")
        return await self.request(
            "PUT",
            relative_location(started),
            params={"digest": blob.digest},
            headers={"Content-Type": OCTET_STREAM},
            body=blob.content,
        )

    async def put_manifest(
        self, reference: str, manifest: SuiteBlob, media_type: str = OCI_MANIFEST
    ) -> httpx.Response:
        return await self.request(
            "PUT",
            f"/v2/<name>/manifests/{reference}",
            headers={"Content-Type": media_type},
            body=manifest.content,
        )


def relative_location(response: httpx.Response) -> str:
    """reggie's GetRelativeLocation: the Location's path and query."""
    location = response.headers.get("location", "")
    assert location, f"{response.request.method} {response.request.url.path}: no Location"
    url = httpx.URL(location)
    return url.raw_path.decode()


def is_success(response: httpx.Response) -> bool:
    return 200 <= response.status_code < 300


def tags_of(response: httpx.Response) -> list[str]:
    """The suite's getTagList: the tags of a tags list, empty when it cannot parse one."""
    try:
        tags = response.json().get("tags")
    except ValueError:
        return []
    return list(tags) if isinstance(tags, list) else []


Step = Callable[[Run], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    name: str  # the suite's g.Specify text
    context: str  # the suite's g.Context it sits in
    run: Step
    # Teardown checks the suite defines only for one OCI_DELETE_MANIFEST_BEFORE_BLOBS value.
    manifests_first: bool | None = None

    def applies(self, manifests_first: bool) -> bool:
        return self.manifests_first in (None, manifests_first)


Failures = dict[tuple[str, bool, str], Exception | None]


class Workflow:
    """One of the suite's workflows: its checks, in the order the suite runs them."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.checks: list[Check] = []
        self._context = "Setup"

    def context(self, name: str) -> None:
        """Checks registered from now on sit in the suite's context ``name``."""
        self._context = name

    def check(self, name: str, *, manifests_first: bool | None = None) -> Callable[[Step], Step]:
        """Register the decorated step as the workflow's next check."""

        def register(step: Step) -> Step:
            taken = {c.name for c in self.checks if c.manifests_first in (None, manifests_first)}
            unique, count = name, 1
            while unique in taken:  # the suite repeats a few names ("... test blob")
                count += 1
                unique = f"{name} #{count}"
            self.checks.append(Check(unique, self._context, step, manifests_first))
            return step

        return register

    def push_check(self, name: str, blob: SuiteBlob) -> None:
        """A setup check: push ``blob`` (POST, then PUT with its digest); 2xx."""

        @self.check(name)
        async def step(run: Run) -> None:
            expect_success(await run.push_blob(blob))

    def tag_check(self, name: str, manifest: SuiteBlob) -> None:
        """A setup check: push ``manifest`` tagged with the suite's test tag, which the
        workflow then uses as its tag; 2xx."""

        @self.check(name)
        async def step(run: Run) -> None:
            run.tag = TEST_TAG_NAME
            expect_success(await run.put_manifest(run.tag, manifest))

    def delete_check(
        self,
        name: str,
        paths: Callable[[Run], Sequence[str]],
        accepted: Sequence[int],
        *,
        manifests_first: bool | None = None,
    ) -> None:
        """A teardown check: DELETE each of ``paths`` (``<name>`` is the namespace), every
        answer one of ``accepted``."""

        @self.check(name, manifests_first=manifests_first)
        async def step(run: Run) -> None:
            for path in paths(run):
                expect(await run.request("DELETE", path), *accepted)

    def cases(self, *, prefix: str = "") -> list[Any]:
        """pytest parameters (workflow, manifests_first, check): every check with the suite's
        default order, and the teardown again with blobs deleted before manifests."""
        return [
            pytest.param(
                self,
                manifests_first,
                check.name,
                id=f"{prefix}{'' if manifests_first else 'blobs first: '}"
                f"{check.context}: {check.name}",
            )
            for manifests_first in (True, False)
            for check in self.checks
            if check.applies(manifests_first) and (manifests_first or check.context == "Teardown")
        ]

    async def run(self, run: Run, failures: Failures) -> None:
        """Run every check in order, each one reporting on its own as in the suite: a
        failed check does not stop the ones after it."""
        for check in self.checks:
            if not check.applies(run.delete_manifest_before_blobs):
                continue
            failure: Exception | None = None
            try:
                await check.run(run)
            except Exception as exc:  # noqa: BLE001 - recorded, then raised by its own test
                failure = exc
            failures[(self.title, run.delete_manifest_before_blobs, check.name)] = failure


@dataclass
class SuiteRun:
    """The outcome of every check of one run of the suite."""

    failures: Failures = field(default_factory=dict)

    def report(self, workflow: Workflow, manifests_first: bool, check: str) -> None:
        """Pass if ``check`` passed in this run; else raise what it failed with."""
        key = (workflow.title, manifests_first, check)
        if key not in self.failures:
            raise LookupError(f"{workflow.title}: {check!r} did not run")
        failure = self.failures[key]
        if failure is not None:
            raise AssertionError(f"{workflow.title}: {check}: {failure}") from failure


def run_suite(workflows: Sequence[Workflow], root: Path) -> SuiteRun:
    """Run ``workflows`` one after the other on one namespace, as the suite does, once per
    teardown order (OCI_DELETE_MANIFEST_BEFORE_BLOBS), each against a fresh registry."""
    outcome = SuiteRun()

    async def main() -> None:
        for manifests_first in (True, False):
            async with local_client(root / f"manifests-first-{manifests_first}") as client:
                for workflow in workflows:
                    run = Run(client, delete_manifest_before_blobs=manifests_first)
                    await workflow.run(run, outcome.failures)

    asyncio.run(main())
    return outcome


def paths(*fixed: str) -> Callable[[Run], Sequence[str]]:
    """The same paths, whatever happened in the run (for ``delete_check``)."""
    return lambda run: fixed


def conformance_test(*workflows: Workflow) -> Callable[..., None]:
    """A test function, one case per check of ``workflows``: the first case runs the
    workflows (with ``run_suite``), every case reports its own check's outcome."""
    runs: list[SuiteRun] = []
    several = len(workflows) > 1
    cases = [
        case
        for workflow in workflows
        for case in workflow.cases(prefix=f"{workflow.title}: " if several else "")
    ]

    @pytest.mark.parametrize(("workflow", "manifests_first", "check"), cases)
    def test(
        tmp_path_factory: pytest.TempPathFactory,
        workflow: Workflow,
        manifests_first: bool,
        check: str,
    ) -> None:
        if not runs:
            runs.append(run_suite(workflows, tmp_path_factory.mktemp("conformance")))
        runs[0].report(workflow, manifests_first, check)

    return test


def expect(response: httpx.Response, *statuses: int, code: str | None = None) -> None:
    """The suite's Expect(resp.StatusCode()).To(...); with ``code``, also the error code the
    spec names for that answer (checked when there is a body: HEAD has none)."""
    request = f"{response.request.method} {response.request.url.raw_path.decode()}"
    assert response.status_code in statuses, (
        f"{request} answered {response.status_code}, expected one of {statuses}: "
        f"{response.text[:300]}"
    )
    if code is not None and response.request.method != "HEAD":
        assert response.json()["errors"][0]["code"] == code, f"{request}: {response.text}"


SUCCESS = tuple(range(200, 300))


def expect_success(response: httpx.Response) -> None:
    """The suite's SatisfyAll(>= 200, < 300)."""
    expect(response, *SUCCESS)
