"""docs/flows.md shows every flow of the shipped library exactly as it ships, and names each
expression function, rounding mode and param type the code has."""

from pathlib import Path

from coffer.flows import expressions
from coffer.flows.files import library_dir

doc = (Path(__file__).resolve().parents[2] / "docs" / "flows.md").read_text()


def test_every_library_flow_is_in_the_doc_as_it_ships() -> None:
    for path in sorted(library_dir.glob("*.yaml")):
        assert f"```yaml\n{path.read_text()}```" in doc, f"docs/flows.md does not show {path.name} as it ships"


def test_the_language_is_documented() -> None:
    for name in (*expressions.functions, *expressions.rounding_modes, "account", "amount", "asset", "text", "decimal", "integer"):
        assert f"`{name}" in doc, name
