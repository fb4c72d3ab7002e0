"""``coffer keys``: the API keys of a keys file, kept as hashes (see :mod:`coffer.http.auth`).

``add`` makes a key, writes only its hash and prints the key once; ``remove`` revokes by key id;
``list`` shows roles and key ids. A running node reads the changed file within a second or so.
"""

from pathlib import Path

import click

from coffer import exit_codes
from coffer.http.auth import KeyConfigError, Role, add_key, parse_keys_file, remove_key

_keys_file_option = click.option(
    "--keys-file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="the node's --keys-file"
)


@click.group("keys")
def keys() -> None:
    """API keys in a keys file: stored hashed, picked up by running nodes without a restart."""


@keys.command("add")
@click.option("--role", required=True, type=click.Choice(["reader", "operator", "admin"]))
@_keys_file_option
def keys_add(role: str, keys_file: Path) -> None:
    """Make a key of ROLE, add its hash to the file and print the key (shown this once only)."""
    try:
        key, key_id = add_key(keys_file, Role[role.upper()])
    except (KeyConfigError, OSError, UnicodeDecodeError) as error:
        click.echo(f"error: cannot add to the keys file {keys_file}: {error}", err=True)
        raise SystemExit(exit_codes.invalid) from None
    click.echo(key)
    click.echo(f"key id {key_id}, role {role}: the key is shown once; the file holds only its hash", err=True)


@keys.command("remove")
@click.argument("key_id")
@_keys_file_option
def keys_remove(key_id: str, keys_file: Path) -> None:
    """Revoke the key whose key id is KEY_ID (see 'coffer keys list')."""
    try:
        removed = remove_key(keys_file, key_id)
    except (KeyConfigError, OSError, UnicodeDecodeError) as error:
        click.echo(f"error: cannot change the keys file {keys_file}: {error}", err=True)
        raise SystemExit(exit_codes.invalid) from None
    if not removed:
        click.echo(f"error: no key with key id {key_id} in {keys_file}", err=True)
        raise SystemExit(exit_codes.not_found)
    click.echo(f"removed key id {key_id}")


@keys.command("list")
@_keys_file_option
def keys_list(keys_file: Path) -> None:
    """Role and key id of every key in the file (plain-text entries are marked: replace them)."""
    try:
        entries = parse_keys_file(keys_file.read_text(), str(keys_file))
    except (KeyConfigError, OSError, UnicodeDecodeError) as error:
        click.echo(f"error: cannot read the keys file {keys_file}: {error}", err=True)
        raise SystemExit(exit_codes.invalid) from None
    for entry in entries:
        click.echo(f"{entry.key_id}  {entry.role.name.lower()}{'' if entry.hashed else '  (plain text: replace it)'}")


def register(main: click.Group) -> None:
    main.add_command(keys)
