"""Flow definitions in files: YAML or JSON, as ``coffer flows apply FILE`` reads them.

A file holds one definition; its ``name`` field (or else the file's stem) names the flow. YAML is
read with PyYAML's safe loader (plain data: no tags, no objects), and then goes through the same
validation as JSON over HTTP. The library of common flows ships in ``library/`` next to this module.
"""

from pathlib import Path
from typing import Any

import msgspec
import yaml

library_dir = Path(__file__).parent / "library"
definition_file_bytes_max = 256 * 1024  # a definition is at most 64 KiB canonical; comments and layout aside


class DefinitionFileError(ValueError):
    """The file is not a YAML or JSON object."""


def read_definition(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(flow name, definition fields) of a YAML or JSON file."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) > definition_file_bytes_max:
        raise DefinitionFileError(f"{path}: larger than {definition_file_bytes_max} bytes")
    return parse_definition(data, path.stem, str(path))


def parse_definition(data: bytes, default_name: str, where: str = "definition") -> tuple[str, dict[str, Any]]:
    try:
        # Dates and other YAML types would not survive as JSON: read every scalar as YAML 1.1's
        # plain types, then insist on the JSON types a definition has.
        fields = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DefinitionFileError(f"{where}: not YAML or JSON: {error}") from None
    if not isinstance(fields, dict):
        raise DefinitionFileError(f"{where}: a definition is an object (a mapping)")
    try:
        fields = msgspec.json.decode(msgspec.json.encode(fields))
    except (TypeError, msgspec.EncodeError) as error:
        raise DefinitionFileError(f"{where}: holds a value JSON cannot carry: {error}") from None
    name = fields.get("name", default_name)
    if not isinstance(name, str):
        raise DefinitionFileError(f"{where}: name must be text")
    return name, fields


def library() -> dict[str, dict[str, Any]]:
    """The shipped definitions by flow name."""
    found = {}
    for path in sorted(library_dir.glob("*.yaml")):
        name, fields = read_definition(path)
        found[name] = fields
    return found
