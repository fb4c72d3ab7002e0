"""API keys and roles.

Roles nest: ``reader`` may read, ``operator`` may also send balance commands, ``admin`` may also
manage accounts (create, limits, lock, unlock, delete) and the log level. Keys come from a file
(one ``ROLE KEY`` pair a line, ``#`` comments) or the ``COFFER_API_KEYS`` variable
(``role:key,role:key``). Keys are compared in constant time and never logged.

Every key has a *key id*, which the events of the commands it sent record (never the key): the
first 12 hex digits of the key's SHA-256.
"""

import hashlib
import hmac
import os
from enum import IntEnum
from pathlib import Path


class Role(IntEnum):
    READER = 1
    OPERATOR = 2
    ADMIN = 3


api_keys_variable = "COFFER_API_KEYS"
key_length_min = 16  # shorter keys are guessable; refuse to start with one


class KeyConfigError(ValueError):
    pass


def key_id_of(key: str) -> str:
    """The public name of a key: what the history records as the sender of a command."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKeys:
    def __init__(self, keys: dict[str, Role]) -> None:
        self._keys = [(key.encode(), role, key_id_of(key)) for key, role in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def identify(self, presented: str | None) -> tuple[Role, str] | None:
        """(role, key id) of the presented key, or None if it is no key of ours."""
        if presented is None:
            return None
        candidate = presented.encode()
        found = None
        # Compare against every key, always: the time taken must not depend on which matched.
        for key, role, key_id in self._keys:
            if hmac.compare_digest(key, candidate):
                found = (role, key_id)
        return found

    def role_of(self, presented: str | None) -> Role | None:
        identity = self.identify(presented)
        return None if identity is None else identity[0]

    @classmethod
    def load(cls, keys_file: Path | None = None, environ: dict[str, str] | None = None) -> "ApiKeys":
        pairs: list[tuple[str, str]] = []
        if keys_file is not None:
            for number, line in enumerate(keys_file.read_text().splitlines(), start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise KeyConfigError(f"{keys_file}:{number}: expected 'ROLE KEY'")
                pairs.append((parts[0], parts[1]))
        variable = (environ if environ is not None else os.environ).get(api_keys_variable, "")
        for item in filter(None, (part.strip() for part in variable.split(","))):
            role, _, key = item.partition(":")
            pairs.append((role, key))
        keys: dict[str, Role] = {}
        for role_name, key in pairs:
            try:
                role = Role[role_name.upper()]
            except KeyError:
                raise KeyConfigError(f"unknown role {role_name!r}: use reader, operator or admin") from None
            if len(key) < key_length_min:
                raise KeyConfigError(f"an API key for role {role_name} is shorter than {key_length_min} characters")
            keys[key] = role
        return cls(keys)
