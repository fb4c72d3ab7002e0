"""API keys and roles.

Roles nest: ``reader`` may read, ``operator`` may also send balance commands, ``admin`` may also
manage accounts (create, limits, lock, unlock, delete) and the log level.

Keys come from a file and from the ``COFFER_API_KEYS`` variable (``role:key,role:key``). The file
holds one entry a line, ``#`` comments allowed:

- ``ROLE sha256:HEX`` — the SHA-256 of the key, never the key: what ``coffer keys add`` writes (it
  prints the new key once). A node that reads the file, or a backup of it, learns no key.
- ``ROLE KEY`` — the key itself, as files written before hashed entries hold them. Such entries
  keep working, so an upgrade locks nobody out, and every load warns about each of them: replace
  them with ``coffer keys add`` and ``coffer keys remove``.

Why a plain SHA-256 and not scrypt or argon2: a key that ``coffer keys add`` makes carries 256 bits
from the operating system's random source, so no guessing attack exists that a slow hash would
slow down, and every request pays for one hash. A presented key is hashed once and compared, in
constant time, with every stored hash.

Every key has a *key id*, which the events of the commands it sent record (never the key): the
first 12 hex digits of the key's SHA-256 — the same for a key stored in plain text or hashed, so
the history names a key the same way before and after its entry is rewritten.

The keys file is read again when it changes (its modification time, size or inode, looked at no
more than once every ``keys_file_check_interval_s`` while requests arrive), so keys are added and
revoked on a running node. A changed file that cannot be read or parsed leaves the previous keys
in force and is logged once. A node given a keys file always requires a key, even once every
entry is removed: an emptied file locks everyone out, it never opens the node.
"""

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

logger = logging.getLogger(__name__)


class Role(IntEnum):
    READER = 1
    OPERATOR = 2
    ADMIN = 3


api_keys_variable = "COFFER_API_KEYS"
key_length_min = 16  # shorter keys are guessable; refuse to start with one
key_id_length = 12
generated_key_bytes = 32  # 256 bits: beyond any guessing, so one fast hash stores it safely
keys_file_check_interval_s = 1.0  # a revoked key stops working within about this
hash_prefix = "sha256:"
_hash_pattern = re.compile(r"sha256:[0-9a-f]{64}")


class KeyConfigError(ValueError):
    pass


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id_of(key: str) -> str:
    """The public name of a key: what the history records as the sender of a command."""
    return key_hash(key).hex()[:key_id_length]


@dataclass(frozen=True)
class KeyEntry:
    role: Role
    digest: bytes  # SHA-256 of the key
    hashed: bool  # stored as a hash (False: a plain-text entry of an older file)

    @property
    def key_id(self) -> str:
        return self.digest.hex()[:key_id_length]

    def line(self) -> str:
        return f"{self.role.name.lower()} {hash_prefix}{self.digest.hex()}"


def _role(name: str) -> Role:
    try:
        return Role[name.upper()]
    except KeyError:
        raise KeyConfigError(f"unknown role {name!r}: use reader, operator or admin") from None


def _entry(role_name: str, secret: str) -> KeyEntry:
    role = _role(role_name)
    if secret.startswith(hash_prefix):
        if not _hash_pattern.fullmatch(secret):
            raise KeyConfigError(f"a key hash for role {role_name} must be 'sha256:' and 64 lower-case hex digits")
        return KeyEntry(role, bytes.fromhex(secret.removeprefix(hash_prefix)), hashed=True)
    if len(secret) < key_length_min:
        raise KeyConfigError(f"an API key for role {role_name} is shorter than {key_length_min} characters")
    return KeyEntry(role, key_hash(secret), hashed=False)


def parse_keys_file(text: str, name: str) -> list[KeyEntry]:
    """The entries of a keys file's text; KeyConfigError naming the line for a bad one."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise KeyConfigError(f"{name}:{number}: expected 'ROLE sha256:HASH' (or 'ROLE KEY')")
        try:
            entries.append(_entry(parts[0], parts[1]))
        except KeyConfigError as error:
            raise KeyConfigError(f"{name}:{number}: {error}") from None
    return entries


def read_keys_file(path: Path) -> list[KeyEntry]:
    entries = parse_keys_file(path.read_text(), str(path))
    plain = sum(not entry.hashed for entry in entries)
    if plain:
        logger.warning(
            "the keys file %s holds %d key(s) in plain text: they work, but replace them with hashed entries "
            "(coffer keys add, then coffer keys remove KEY_ID)",
            path,
            plain,
        )
    return entries


def _file_signature(path: Path) -> tuple[int, int, int]:
    status = path.stat()
    return (status.st_mtime_ns, status.st_size, status.st_ino)


class ApiKeys:
    def __init__(self, entries: list[KeyEntry], keys_file: Path | None = None, extra: list[KeyEntry] | None = None) -> None:
        """``entries``: the keys in force; ``keys_file``: re-read when it changes (its entries
        then replace all but ``extra``, the keys of the environment)."""
        self._extra = list(extra or [])
        self._entries = list(entries)
        self._keys_file = keys_file
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = time.monotonic()
        if keys_file is not None:
            try:
                self._signature = _file_signature(keys_file)
            except OSError:
                self._signature = None

    def __bool__(self) -> bool:
        """Whether this node requires a key (a keys file was given, or the environment has keys)."""
        return self._keys_file is not None or bool(self._entries)

    def identify(self, presented: str | None) -> tuple[Role, str] | None:
        """(role, key id) of the presented key, or None if it is no key of ours."""
        self.refresh()
        if presented is None:
            return None
        candidate = key_hash(presented)
        found = None
        # Compare against every key, always: the time taken must not depend on which matched.
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, candidate):
                found = (entry.role, entry.key_id)
        return found

    def role_of(self, presented: str | None) -> Role | None:
        identity = self.identify(presented)
        return None if identity is None else identity[0]

    def refresh(self, force: bool = False) -> None:
        """Re-read the keys file if it changed (at most once per ``keys_file_check_interval_s``)."""
        if self._keys_file is None:
            return
        now = time.monotonic()
        if not force and now - self._checked_at < keys_file_check_interval_s:
            return
        self._checked_at = now
        try:
            signature = _file_signature(self._keys_file)
        except OSError as error:
            if self._signature is not None:
                logger.error("cannot read the keys file %s (%s): the previous keys stay in force", self._keys_file, error.strerror)
            self._signature = None
            return
        if signature == self._signature:
            return
        self._signature = signature
        try:
            entries = read_keys_file(self._keys_file)
        except (OSError, UnicodeDecodeError, KeyConfigError) as error:
            logger.error("cannot reload the keys file %s: %s; the previous keys stay in force", self._keys_file, error)
            return
        self._entries = entries + self._extra
        logger.warning("reloaded the keys file %s: %d key(s)", self._keys_file, len(self._entries))

    @classmethod
    def load(cls, keys_file: Path | None = None, environ: dict[str, str] | None = None) -> "ApiKeys":
        from_file = read_keys_file(keys_file) if keys_file is not None else []
        variable = (environ if environ is not None else os.environ).get(api_keys_variable, "")
        from_environment = []
        for item in filter(None, (part.strip() for part in variable.split(","))):
            role, _, key = item.partition(":")
            from_environment.append(_entry(role, key))
        return cls(from_file + from_environment, keys_file, from_environment)


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe text."""
    return "ck_" + secrets.token_urlsafe(generated_key_bytes)


def write_keys_file(path: Path, lines: list[str]) -> None:
    """Replace the file at once (write aside, fsync, rename): a node never reads half a file."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(aside, "w") as file:
        file.write("".join(f"{line}\n" for line in lines))
        file.flush()
        os.fsync(file.fileno())
    if path.exists():
        os.chmod(aside, path.stat().st_mode & 0o777)
    else:
        os.chmod(aside, 0o600)
    os.replace(aside, path)


def add_key(path: Path, role: Role) -> tuple[str, str]:
    """Append a new key of ``role`` to the keys file (its hash only); (key, key id)."""
    lines = path.read_text().splitlines() if path.exists() else []
    parse_keys_file("\n".join(lines), str(path))  # refuse to extend a file the node would refuse
    key = new_key()
    entry = KeyEntry(role, key_hash(key), hashed=True)
    write_keys_file(path, [*lines, entry.line()])
    return key, entry.key_id


def remove_key(path: Path, key_id: str) -> int:
    """Remove every entry whose key id is ``key_id``; how many were removed."""
    lines = path.read_text().splitlines()
    kept = []
    removed = 0
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and not line.strip().startswith("#"):
            entry = parse_keys_file(line, str(path))[0]
            if entry.key_id == key_id:
                removed += 1
                continue
        kept.append(line)
    if removed:
        write_keys_file(path, kept)
    return removed
