"""The README stays short and its links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_is_short_with_contents_and_links_that_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    assert "**Contents:**" in readme
    for anchor in re.findall(r"\]\(#([a-z-]+)\)", readme):
        assert f"## {anchor.replace('-', ' ')}".lower() in readme.lower(), anchor
    for target in re.findall(r"\]\((docs/[^)#]+)\)", readme):
        assert (ROOT / target).is_file(), target


def test_every_make_target_the_docs_name_exists() -> None:
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\bmake ([a-z][a-z-]+)", doc.read_text()):
            assert target in targets, f"{doc.name}: make {target}"


def test_every_test_the_threat_model_names_exists() -> None:
    """docs/security.md: each row's test is a real file and a real test function; a
    `::name` alone belongs to the file named before it in the same cell."""
    text = (ROOT / "docs/security.md").read_text()
    named = 0
    for row in (line for line in text.splitlines() if line.startswith("| ")):
        for cell in row.split(" | "):
            current = None
            for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", cell):
                current = path or current
                if current is None:
                    continue
                assert (ROOT / current).is_file(), current
                source = (ROOT / current).read_text()
                if name:
                    assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{current}::{name}"
                    named += 1
    assert named >= 40


def test_the_architecture_page_names_every_module() -> None:
    text = (ROOT / "docs/architecture.md").read_text()
    missing = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "components").glob("*/*.py"))
               if path.stem != "__init__" and f"`{path.relative_to(ROOT)}`" not in text]
    assert missing == [], f"docs/architecture.md does not name {missing}"
