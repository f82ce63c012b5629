"""TLS as an operator sets it up: a private CA, a server certificate for 127.0.0.1, Entrepot
serving https (``http.tls`` or registry:2's ``REGISTRY_HTTP_TLS_*`` variables), and skopeo
verifying the server with the CA from ``--cert-dir`` (containers-certs.d(5): ``*.crt`` are
CAs, ``*.cert``/``*.key`` a client certificate).

Mistakes in the files are startup errors that say what is wrong; with ``http.tls.clientcas``
a client without a certificate from one of those CAs does not get in.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import clients
from .clients import ClientError
from .images import ImageLayout, build_image, layout_tags
from .servers import (
    REPO_ROOT,
    ManagedServer,
    ServerStartError,
    find_free_port,
    registry_config,
)

pytestmark = pytest.mark.e2e

STARTUP_ERROR_TIMEOUT = 30.0  # a bad TLS setup must end `entrepot serve` well within this


# --- a private PKI ------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=7)
    )


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, builder.sign(key, hashes.SHA256())


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    """Files of a private PKI, and skopeo --cert-dir directories made of them."""

    ca: Path  # the server CA
    server_cert: Path  # for IP 127.0.0.1, signed by `ca`
    server_key: Path
    unrelated_key: Path  # a valid key that is not the server certificate's
    client_ca: Path  # the CA of client certificates (http.tls.clientcas)
    trust_dir: Path  # ca.crt only
    client_dir: Path  # ca.crt + client.cert/client.key from client_ca
    rogue_client_dir: Path  # ca.crt + a client certificate from the server CA instead
    empty_dir: Path  # nothing: only the system's CAs


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("Entrepot e2e server CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "127.0.0.1", server=True)
    client_ca_key, client_ca_cert = _ca("Entrepot e2e client CA")
    client_key, client_cert = _leaf(client_ca_key, client_ca_cert, "alice", server=False)
    rogue_key, rogue_cert = _leaf(ca_key, ca_cert, "mallory", server=False)

    def cert_dir(
        name: str, client: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None
    ) -> Path:
        directory = base / name
        directory.mkdir()
        _write_cert(directory / "ca.crt", ca_cert)
        if client is not None:
            _write_key(directory / "client.key", client[0])
            _write_cert(directory / "client.cert", client[1])
        return directory

    empty = base / "empty"
    empty.mkdir()
    return Pki(
        ca=_write_cert(base / "ca.crt", ca_cert),
        server_cert=_write_cert(base / "server.crt", server_cert),
        server_key=_write_key(base / "server.key", server_key),
        unrelated_key=_write_key(base / "unrelated.key", _key()),
        client_ca=_write_cert(base / "client-ca.crt", client_ca_cert),
        trust_dir=cert_dir("trust", None),
        client_dir=cert_dir("client", (client_key, client_cert)),
        rogue_client_dir=cert_dir("rogue", (rogue_key, rogue_cert)),
        empty_dir=empty,
    )


# --- Entrepot over https ------------------------------------------------------------------------


class HttpsEntrepot(ManagedServer):
    """``python -m entrepot serve`` (as servers.entrepot_server) that serves https: its url is
    https://127.0.0.1:PORT, and readiness is probed over TLS trusting `ca` (with the client
    certificate of `client_dir`, if given)."""

    def __init__(
        self,
        root: Path,
        workdir: Path,
        *,
        ca: Path,
        client_dir: Path | None,
        config: Mapping[str, Any] | None,
        env: Mapping[str, str] | None,
    ) -> None:
        pythonpath = os.pathsep.join(
            p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
        )
        super().__init__(
            "entrepot",
            argv=lambda cfg: [sys.executable, "-m", "entrepot", "serve", str(cfg)],
            root=root,
            workdir=workdir,
            config=config,
            env={"PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath, **(env or {})},
        )
        self.ca = ca
        self.client_dir = client_dir

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.client_dir is not None:
            context.load_cert_chain(self.client_dir / "client.cert", self.client_dir / "client.key")
        return context

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"entrepot exited with code {code} before answering {self.url}/v2/\n"
                    f"--- output ---\n{self.log()[-6000:]}"
                )
            try:
                with urllib.request.urlopen(
                    f"{self.url}/v2/", timeout=1.0, context=self.ssl_context()
                ) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return
                last = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"entrepot did not answer {self.url}/v2/ within {self.start_timeout:.0f}s "
                    f"(last: {last})\n--- output ---\n{self.log()[-6000:]}"
                )
            time.sleep(0.05)


HttpsFactory = Callable[..., HttpsEntrepot]


@pytest.fixture
def https_entrepot(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsFactory]:
    """``start(*, config=None, env=None, client_dir=None)`` -> a running HttpsEntrepot."""
    started: list[HttpsEntrepot] = []

    def start(
        *,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        client_dir: Path | None = None,
    ) -> HttpsEntrepot:
        workdir = tmp_path_factory.mktemp("entrepot-https")
        server = HttpsEntrepot(
            workdir / "root", workdir, ca=pki.ca, client_dir=client_dir, config=config, env=env
        )
        started.append(server)
        return server.start()  # type: ignore[return-value]

    yield start
    for server in reversed(started):
        server.stop()


def tls_config(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {
        "http": {"tls": {"certificate": str(pki.server_cert), "key": str(pki.server_key), **extra}}
    }


# --- skopeo with verification on ----------------------------------------------------------------


def push_verified(image: ImageLayout, server: ManagedServer, repo: str, cert_dir: Path) -> None:
    clients.skopeo(
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=true",
        "--dest-cert-dir",
        str(cert_dir),
        image.ref,
        f"docker://{server.host}/{repo}:{image.tag}",
    )


def pull_verified(server: ManagedServer, repo: str, tag: str, dest: Path, cert_dir: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    clients.skopeo(
        "copy",
        "--src-tls-verify=true",
        "--src-cert-dir",
        str(cert_dir),
        f"docker://{server.host}/{repo}:{tag}",
        f"oci:{dest}:{tag}",
    )


def assert_round_trip(image: ImageLayout, pulled: Path) -> None:
    assert layout_tags(pulled) == {image.tag: image.digest}
    for digest in image.all_digests:
        copy = pulled / "blobs" / "sha256" / digest.split(":", 1)[1]
        assert copy.read_bytes() == image.blob(digest), digest


def refused(call: Callable[..., object], *args: Any) -> str:
    """Run ``call(*args)``, which must fail with a client error; the client's stderr."""
    with pytest.raises(ClientError) as failure:
        call(*args)
    return failure.value.stderr


# --- the tests ----------------------------------------------------------------------------------


def test_skopeo_pushes_and_pulls_over_verified_https(
    https_entrepot: HttpsFactory, pki: Pki, tmp_path: Path
) -> None:
    entrepot = https_entrepot(config=tls_config(pki))
    image = build_image(tmp_path / "src", tag="1", seed=201, label="tls")

    push_verified(image, entrepot, "secure/app", pki.trust_dir)
    pulled = tmp_path / "pulled"
    pull_verified(entrepot, "secure/app", "1", pulled, pki.trust_dir)
    assert_round_trip(image, pulled)

    # Without the CA the server certificate is not trusted, for pushes and pulls alike.
    stderr = refused(
        lambda: pull_verified(entrepot, "secure/app", "1", tmp_path / "no-ca", pki.empty_dir)
    )
    assert "x509: certificate signed by unknown authority" in stderr, stderr
    stderr = refused(lambda: push_verified(image, entrepot, "secure/other", pki.empty_dir))
    assert "x509: certificate signed by unknown authority" in stderr, stderr
    # And nothing is served in clear text on the TLS port.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{entrepot.host}/v2/", timeout=5)


def test_tls_files_from_registry_environment_variables(
    https_entrepot: HttpsFactory, pki: Pki, tmp_path: Path
) -> None:
    entrepot = https_entrepot(
        env={
            "REGISTRY_HTTP_TLS_CERTIFICATE": str(pki.server_cert),
            "REGISTRY_HTTP_TLS_KEY": str(pki.server_key),
        }
    )
    assert "tls" not in yaml.safe_load(entrepot.config_path.read_text())["http"]
    image = build_image(tmp_path / "src", tag="env", seed=202, label="tls-env")
    push_verified(image, entrepot, "secure/env", pki.trust_dir)
    pulled = tmp_path / "pulled"
    pull_verified(entrepot, "secure/env", "env", pulled, pki.trust_dir)
    assert_round_trip(image, pulled)


@dataclass(frozen=True)
class BadTls:
    """A broken TLS setup and what `entrepot serve`'s error output must say about it."""

    config: Callable[[Pki, Path], dict[str, Any]]
    env: Callable[[Pki, Path], dict[str, str]]
    must_say: Callable[[Pki, Path], list[str]]  # substrings, compared lower-cased


BAD_TLS = {
    "missing key file": BadTls(
        config=lambda pki, tmp: tls_config(pki, key=str(tmp / "missing.key")),
        env=lambda pki, tmp: {},
        must_say=lambda pki, tmp: ["http.tls.key", str(tmp / "missing.key")],
    ),
    "missing key file from the environment": BadTls(
        config=lambda pki, tmp: {},
        env=lambda pki, tmp: {
            "REGISTRY_HTTP_TLS_CERTIFICATE": str(pki.server_cert),
            "REGISTRY_HTTP_TLS_KEY": str(tmp / "missing.key"),
        },
        must_say=lambda pki, tmp: ["http.tls.key", str(tmp / "missing.key")],
    ),
    "key of another certificate": BadTls(
        config=lambda pki, tmp: tls_config(pki, key=str(pki.unrelated_key)),
        env=lambda pki, tmp: {},
        must_say=lambda pki, tmp: ["http.tls", "mismatch"],
    ),
    "certificate given as the key": BadTls(
        config=lambda pki, tmp: tls_config(pki, key=str(pki.server_cert)),
        env=lambda pki, tmp: {},
        must_say=lambda pki, tmp: ["http.tls.key", str(pki.server_cert)],
    ),
}


@pytest.mark.parametrize("case", list(BAD_TLS), ids=list(BAD_TLS))
def test_broken_tls_setup_is_a_clear_startup_error(case: str, pki: Pki, tmp_path: Path) -> None:
    bad = BAD_TLS[case]
    port = find_free_port()
    config = registry_config(tmp_path / "root", port, bad.config(pki, tmp_path))
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), **bad.env(pki, tmp_path)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "entrepot", "serve", str(config_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=STARTUP_ERROR_TIMEOUT,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"entrepot kept running with {case}:\n{exc.stdout!r}\n{exc.stderr!r}")
    output = f"{proc.stdout}\n{proc.stderr}"
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    for text in bad.must_say(pki, tmp_path):
        assert text.lower() in output.lower(), f"{text!r} not in:\n{output}"


def test_clientcas_require_a_client_certificate(
    https_entrepot: HttpsFactory, pki: Pki, tmp_path: Path
) -> None:
    entrepot = https_entrepot(
        config=tls_config(pki, clientcas=[str(pki.client_ca)]), client_dir=pki.client_dir
    )
    image = build_image(tmp_path / "src", tag="1", seed=203, label="mtls")

    # With a certificate from the client CA: push and pull.
    push_verified(image, entrepot, "secure/mtls", pki.client_dir)
    pulled = tmp_path / "pulled"
    pull_verified(entrepot, "secure/mtls", "1", pulled, pki.client_dir)
    assert_round_trip(image, pulled)

    # Without one, or with one the client CA did not sign (Go's TLS client then sends none,
    # the server's certificate request naming the client CA only): the handshake fails.
    before = clients.storage_snapshot(entrepot.root)
    for cert_dir in (pki.trust_dir, pki.rogue_client_dir):
        dest = tmp_path / f"pull-{cert_dir.name}"
        stderr = refused(pull_verified, entrepot, "secure/mtls", "1", dest, cert_dir)
        assert "remote error: tls: certificate required" in stderr, stderr
        stderr = refused(push_verified, image, entrepot, "secure/intruder", cert_dir)
        assert "remote error: tls: certificate required" in stderr, stderr
    # A client that does present the rogue certificate, and one that presents none.
    rogue = ssl.create_default_context(cafile=str(pki.ca))
    rogue.load_cert_chain(pki.rogue_client_dir / "client.cert", pki.rogue_client_dir / "client.key")
    for context in (rogue, ssl.create_default_context(cafile=str(pki.ca))):
        with pytest.raises(httpx.HTTPError) as failure:
            httpx.post(f"{entrepot.url}/v2/secure/intruder/blobs/uploads/", verify=context)
        assert "ALERT" in str(failure.value), repr(failure.value)
    assert clients.storage_snapshot(entrepot.root) == before
    # The server is still there for the right client.
    response = httpx.get(f"{entrepot.url}/v2/", verify=entrepot.ssl_context())
    assert response.status_code == 200
