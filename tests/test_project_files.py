"""The project's files for users and contributors: the license pyproject.toml declares, a valid CITATION.cff, and
links in the root Markdown files that lead somewhere."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
ROOT_PAGES = ["README.md", "CHANGELOG.md", "CONTRIBUTING.md", "SECURITY.md"]


def test_the_license_file_is_the_license_pyproject_declares():
    assert PROJECT["license"] == "Apache-2.0"
    lines = [line.strip() for line in (ROOT / "LICENSE").read_text().splitlines()]
    assert lines[1:3] == ["Apache License", "Version 2.0, January 2004"]
    assert "END OF TERMS AND CONDITIONS" in lines


def test_the_citation_file_is_cff_1_2_0_and_agrees_with_pyproject():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    # CFF 1.2.0's required keys, for the file and for each of its references.
    assert cff["cff-version"] == "1.2.0"
    assert isinstance(cff["message"], str) and cff["message"].strip()
    assert isinstance(cff["title"], str) and cff["title"].strip()
    assert cff["authors"] and all("name" in a or "family-names" in a for a in cff["authors"])
    assert (cff["version"], cff["license"]) == (PROJECT["version"], PROJECT["license"])
    for ref in cff.get("references", []):
        assert {"type", "title", "authors"} <= ref.keys(), ref.get("title")
        assert all("name" in a or "family-names" in a for a in ref["authors"]), ref["title"]


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", ROOT_PAGES)
def test_every_relative_link_leads_to_a_file_and_heading(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / path) if path else ROOT / page
        assert file.exists(), f"{page} links to {target}: no such file"
        if anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), flags=re.MULTILINE)
            assert anchor in {_anchor(h) for h in headings}, f"{page} links to {target}: no such heading"
