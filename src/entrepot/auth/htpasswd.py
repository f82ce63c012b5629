"""htpasswd files with bcrypt entries, as ``htpasswd -B`` writes them and registry:2 reads
them. The file is re-read when it changes, so users can be added without a restart."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

import bcrypt

log = logging.getLogger("entrepot.auth")

# Checked when a user is unknown, so that an unknown user costs as much as a wrong
# password and timing does not tell which names exist. A fixed hash (cost 10) rather than
# one made at import: hashing cost every process that imports this module (the CLI too).
_DUMMY_HASH = b"$2b$10$3PnSNyQcY9JMdD4oPL37J.0AZbqpJF9yhs/7OqCe7pBN.p6hCnd9S"


class HtpasswdError(Exception):
    pass


def parse_htpasswd(content: str | bytes, source: str) -> dict[str, bytes]:
    """user -> bcrypt hash; HtpasswdError names ``source`` and the line that is wrong."""
    try:
        text = content.decode() if isinstance(content, bytes) else content
    except UnicodeDecodeError as exc:
        raise HtpasswdError(
            f"{source}: not a text file (byte {exc.start} is not UTF-8); "
            "htpasswd -B writes 'user:hash' lines"
        ) from None
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise HtpasswdError(f"{source}:{number}: not a 'user:hash' line")
        if not hashed.startswith(("$2y$", "$2a$", "$2b$")):
            raise HtpasswdError(
                f"{source}:{number}: user {user!r} has no bcrypt hash (use htpasswd -B)"
            )
        users[user] = hashed.encode()
    return users


def check_password(hashed: bytes | None, password: str) -> bool:
    """bcrypt check; constant-time in the comparison and as costly for unknown users."""
    candidate = password.encode()
    if hashed is None:
        bcrypt.checkpw(candidate, _DUMMY_HASH)
        return False
    # "$2y$" (Apache's name for the same algorithm) is what the bcrypt library calls "$2b$".
    normalized = b"$2b$" + hashed[4:] if hashed.startswith(b"$2y$") else hashed
    try:
        computed = bcrypt.hashpw(candidate, normalized)
    except ValueError:
        return False
    return hmac.compare_digest(computed, normalized)


class HtpasswdFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, bytes] = {}
        self.reload()

    def reload(self) -> None:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_ino)
            if stamp == self._stamp:
                return
            content = self.path.read_bytes()
        except OSError as exc:
            raise HtpasswdError(f"cannot read htpasswd file {self.path}: {exc.strerror}") from exc
        self._users = parse_htpasswd(content, str(self.path))
        self._stamp = stamp

    def lookup(self, user: str) -> bytes | None:
        try:
            self.reload()
        except HtpasswdError as exc:
            log.warning("%s; keeping the users read before", exc)
        return self._users.get(user)


class UserDirectory:
    """Users from an htpasswd file and/or listed in the configuration (bcrypt hashes)."""

    def __init__(self, file: HtpasswdFile | None, listed: dict[str, str] | None = None) -> None:
        self.file = file
        self.listed = {user: hashed.encode() for user, hashed in (listed or {}).items()}

    def lookup(self, user: str) -> bytes | None:
        if user in self.listed:
            return self.listed[user]
        return self.file.lookup(user) if self.file is not None else None
