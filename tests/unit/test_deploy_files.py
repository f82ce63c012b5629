"""The deployment files agree with each other and with Entrepot: the Kubernetes manifests
(kinds, ports, registry:2's paths, a config.yml that `entrepot check-config` accepts), the
nodes' containerd hosts.toml (pointed at the Service), the Dockerfile's paths, and the README,
which shows these files verbatim."""

from __future__ import annotations

import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from entrepot import cli
from entrepot.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFESTS = DEPLOY / "kubernetes" / "entrepot.yaml"
HOSTS_FILES = sorted((DEPLOY / "containerd").glob("*/hosts.toml"))
IMAGE_CONFIG = DEPLOY / "image" / "config.yml"
CONFIG_DIR = "/etc/docker/registry"  # registry:2's paths
STORE = "/var/lib/registry"


def _manifests() -> dict[str, dict[str, Any]]:
    documents = [doc for doc in yaml.safe_load_all(MANIFESTS.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in documents}
    assert len(by_kind) == len(documents), "one object of each kind"
    return by_kind


def _dockerfile() -> dict[str, list[str]]:
    """Dockerfile instructions (continuation lines joined) by keyword."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.setdefault(keyword.upper(), []).append(rest.strip())
    return found


def _check_config(config_yml: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """`entrepot check-config` on the text, storage redirected to a temporary directory (the
    container's /var/lib/registry is not this machine's)."""
    path = tmp_path / "config.yml"
    path.write_text(config_yml)
    monkeypatch.setenv("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", str(tmp_path / "store"))
    return cli.main(["check-config", str(path)])


def _load_config_text(text: str) -> Config:
    """The configuration a config.yml text gives (no environment overrides)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as file:
        file.write(text)
        file.flush()
        return load_config(file.name, environ={})


def _container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = manifests["Deployment"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert len(containers) == 1
    return containers[0]


def test_the_kubernetes_manifests_are_the_four_objects_and_their_config_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = _manifests()
    assert set(manifests) == {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"}
    config_yml = manifests["ConfigMap"]["data"]["config.yml"]
    assert _check_config(config_yml, tmp_path, monkeypatch) == 0, capsys.readouterr().err
    assert "warning" not in capsys.readouterr().err


def test_the_deployment_mounts_registry2_paths_and_listens_where_the_config_says() -> None:
    manifests = _manifests()
    config = _load_config_text(manifests["ConfigMap"]["data"]["config.yml"])
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    container = _container(manifests)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}

    # The store: the claim, at registry:2's path, which is the config's root directory.
    assert str(config.storage.rootdirectory) == STORE
    claim = volumes[mounts[STORE]]["persistentVolumeClaim"]["claimName"]
    assert claim == manifests["PersistentVolumeClaim"]["metadata"]["name"]
    # The config: the ConfigMap's config.yml at /etc/docker/registry/config.yml, served.
    config_map = volumes[mounts[CONFIG_DIR]]["configMap"]["name"]
    assert config_map == manifests["ConfigMap"]["metadata"]["name"]
    assert container["args"] == [f"{CONFIG_DIR}/config.yml"]

    # Ports: http.addr and http.debug.addr are the container's; the Service reaches the first.
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["registry"] == config.http.port
    assert config.http.debug is not None and ports["metrics"] == config.http.debug.port
    service = manifests["Service"]["spec"]
    assert service["selector"] == manifests["Deployment"]["spec"]["selector"]["matchLabels"]
    [service_port] = service["ports"]
    assert service_port["targetPort"] in ("registry", config.http.port)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "registry"}

    # The pod runs as the image's user, and the volume is made writable for it.
    uid = _image_uid()
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["fsGroup"] == uid


@pytest.mark.parametrize("hosts_file", HOSTS_FILES, ids=lambda p: p.parent.name)
def test_the_containerd_hosts_files_point_at_the_service(hosts_file: Path) -> None:
    hosts = tomllib.loads(hosts_file.read_text())
    registry = hosts_file.parent.name
    fallback = urlsplit(hosts["server"])
    assert fallback.scheme == "https"
    assert registry == "docker.io" or registry == fallback.hostname
    [(url, host)] = hosts["host"].items()
    mirror = urlsplit(url)
    node_port = _manifests()["Service"]["spec"]["ports"][0]["nodePort"]
    assert (mirror.scheme, mirror.hostname, mirror.port) == ("http", "127.0.0.1", node_port)
    assert {"pull", "resolve"} <= set(host["capabilities"])
    assert "push" not in host["capabilities"]  # a mirror: pushes go to the registry named


def test_both_registry_hosts_have_a_hosts_file() -> None:
    assert {path.parent.name for path in HOSTS_FILES} == {"docker.io", "ghcr.io"}


def _image_uid() -> int:
    user = _dockerfile()["USER"][-1]
    name = user.split(":")[0]
    uid = re.search(rf"useradd .*--uid (\d+) .*\b{name}\b", (REPO / "Dockerfile").read_text())
    assert uid, f"no useradd of {name} in the Dockerfile"
    return int(uid.group(1))


def test_the_dockerfile_has_registry2s_paths_a_user_and_a_health_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dockerfile = _dockerfile()
    assert dockerfile["VOLUME"] == [f'["{STORE}"]']
    assert dockerfile["EXPOSE"] == ["5000"]
    assert f"deploy/image/config.yml {CONFIG_DIR}/config.yml" in dockerfile["RUN"][0]
    assert dockerfile["CMD"][-1] == f'["{CONFIG_DIR}/config.yml"]'
    assert _image_uid() != 0
    assert "entrepot healthcheck" in dockerfile["HEALTHCHECK"][0]
    assert dockerfile["ARG"][0].startswith("BASE=")
    assert dockerfile["FROM"] == ["${BASE}"]

    # The image's default config is registry:2's: its store and port, and it checks.
    config = load_config(IMAGE_CONFIG, environ={})
    assert str(config.storage.rootdirectory) == STORE
    assert config.http.port == 5000
    assert _check_config(IMAGE_CONFIG.read_text(), tmp_path, monkeypatch) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_readme_shows_the_deployment_files_as_they_are() -> None:
    readme = (REPO / "README.md").read_text()
    shown = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", readme, re.S))
    expected = [MANIFESTS, *HOSTS_FILES]
    for path in expected:
        name = str(path.relative_to(REPO))
        assert name in shown, f"README does not show {name}"
        assert shown[name] == path.read_text(), f"README's copy of {name} differs"
