"""docs/api.md is the OpenAPI document in prose, up to date; nothing points outside the repository."""

import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from coffer.cli import main
from coffer.core.errors import ErrorCode
from coffer.server import api_markdown
from coffer.server.openapi import openapi_document, query_openapi_document

root = Path(__file__).resolve().parents[2]
api_doc = root / "docs" / "api.md"


def test_docs_api_md_is_generated_from_the_openapi_document() -> None:
    expected = api_markdown.markdown(openapi_document())
    assert api_doc.read_text() == expected, "docs/api.md is out of date: run `coffer openapi --markdown > docs/api.md`"
    printed = CliRunner().invoke(main, ["openapi", "--markdown"])
    assert printed.exit_code == 0 and printed.stdout == expected


def test_every_route_and_schema_of_the_document_is_in_the_doc() -> None:
    text = api_doc.read_text()
    for path, item in openapi_document()["paths"].items():
        for method in item:
            assert f"### {method.upper()} {path}\n" in text
    for name in openapi_document()["components"]["schemas"]:
        assert f"### {name}\n" in text


def test_every_error_code_is_explained() -> None:
    assert set(api_markdown.error_meanings) == set(ErrorCode)
    for code in ErrorCode:
        assert f"| `{code.value}` |" in api_doc.read_text()


def test_the_query_servers_document_is_a_part_of_the_nodes() -> None:
    node, query = openapi_document(), query_openapi_document()
    for path, item in query["paths"].items():
        for method, operation in item.items():
            assert node["paths"][path][method] == operation
    assert query["components"] == node["components"]


def test_nothing_points_outside_the_repository() -> None:
    # The project documents itself: no pointer to notes kept outside the repository.
    pointer = re.compile(r"shared/[A-Z]+\.md|\bAPI\.md|\bSPEC\.md|\bSTYLE\.md|\bARCHITECTURE\.md")
    files = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    files += [path for folder in ("coffer", "tests") for path in sorted((root / folder).rglob("*.py"))]
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pointer.search(line)
    ]
    assert offenders == []
    helps = [["query", "serve", "--help"], ["--help"], ["openapi", "--help"]]
    for arguments in helps:
        shown = subprocess.run([sys.executable, "-m", "coffer", *arguments], capture_output=True, text=True, check=True).stdout
        assert not pointer.search(shown), arguments


def test_the_readme_points_to_the_contract() -> None:
    readme = (root / "README.md").read_text()
    section = readme.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    assert "docs/api.md" in section and "/openapi.json" in section
