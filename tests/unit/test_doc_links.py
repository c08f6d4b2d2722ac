"""Relative links in the README and docs/ point at files inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = (document.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{document.name}: {target} is outside the repository"
        assert path.exists(), f"{document.name}: {target} does not exist"


def test_readme_links_the_guide_and_the_docs_pages() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "](docs/api-guide.md)" in readme
    assert "/docs" in readme and "/redoc" in readme
