"""Building an Entrepot app from a registry:2 config with an ``auth`` section, in-process."""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt
import httpx

from entrepot.config import load_config
from entrepot.root import create_app

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "admin": "admin-secret"}


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def write_htpasswd(path: Path) -> Path:
    path.write_text("".join(f"{user}:{bcrypt_hash(pw)}\n" for user, pw in PASSWORDS.items()))
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def app_client(
    tmp_path: Path, auth_yaml: str, *, extra: str = "", http_extra: str = ""
) -> httpx.AsyncClient:
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        "  delete:\n    enabled: true\n"
        "http:\n  addr: :5000\n  secret: test-secret\n"
        f"{http_extra}"
        f"auth:\n{auth_yaml}\n{extra}"
    )
    app = create_app(load_config(config))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://registry.test"
    )


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the storage root, to prove a refused request changed nothing."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
