"""The docs say what the code does: their generated parts are current, every link, image and
repository path they name exists, every error the code raises is in the error table, every
setting they name is real, and the README stays short with each figure beside its file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from components.core import errors
from harness import architecture_reference as arch
from harness.settings_reference import settings_table

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs/benchmarks").glob("*.md"))]
# Capitalised names the docs give that are not our settings: variables read by BentoML, pip,
# Python, torch or vLLM, values of ours written in capitals, a test's table. The generated
# parts (docstrings) are not scanned.
NOT_OUR_SETTINGS = {"AUTO", "BENTOML_CONFIG", "INFO", "MAY_IMPORT", "OPTIONS", "PIP_CERT", "PROMETHEUS_MULTIPROC_DIR",
                    "REQUESTS_CA_BUNDLE", "SDPA", "SSL_CERT_FILE", "TORCHDYNAMO_SUPPRESS_ERRORS", "TRITON_ATTN",
                    "VLLM_CPU_NUM_OF_RESERVED_CPU"}
REPO_PATH = re.compile(r"`((?:components|tests|harness|benchmarks|deploy|docs|monitoring|requirements)/[\w./{},*-]*"
                       r"|service\.py|bentofile(?:\.cpu)?\.yaml|configuration\.yaml|Makefile)(?:::(\w+))?`")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> list[str]:
    prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [line.lstrip("#").strip() for line in prose.splitlines() if line.startswith("#")]


def anchors(path: Path) -> set[str]:
    return {slug(heading) for heading in headings(path)}


def links(text: str) -> list[str]:
    """Targets of Markdown links and images, outside code blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", prose)


def without_generated(text: str) -> str:
    return re.sub(r"<!-- (\w+):begin -->.*?<!-- \1:end -->", "", text, flags=re.S)


def expand(path: str) -> list[str]:
    """`results.{json,md}` as two paths."""
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    return [p for part in match.group(1).split(",") for p in expand(path[: match.start()] + part + path[match.end():])]


def test_the_generated_module_table_and_layer_list_are_current() -> None:
    for relative in arch.TARGETS:
        assert (ROOT / relative).read_text() == arch.regenerated(relative), f"{relative} is stale: run make docs"


def test_every_module_and_package_is_in_the_generated_table() -> None:
    text = (ROOT / "docs/architecture.md").read_text()
    for path in sorted((ROOT / "components").rglob("*.py")):
        shown = f"{rel(path.parent)}/" if path.name == "__init__.py" else rel(path)
        assert f"`{shown}`" in text, f"docs/architecture.md does not name {shown}"


@pytest.mark.parametrize("missing", ["package", "module"])
def test_a_package_or_module_without_a_docstring_stops_the_generator(tmp_path: Path, missing: str) -> None:
    package = tmp_path / "components" / "edge"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('' if missing == "package" else '"""The edge."""\n')
    (package / "auth.py").write_text('"""Authentication. More."""\n' if missing == "package" else "x = 1\n")
    with pytest.raises(arch.MissingDocstring, match="__init__.py" if missing == "package" else "auth.py"):
        arch.packages(tmp_path / "components")


def test_the_generator_orders_packages_by_their_imports_and_takes_first_sentences(tmp_path: Path) -> None:
    module_doc = '"""First, with a path components/\nx.py. Second."""\n'
    for name, doc, body in [("core", "Core things; imports nothing of ours.", ""),
                            ("api", "The dialects.", "from components.edge import auth\n"),
                            ("edge", "The edge.", "from components.core import errors\n")]:
        (tmp_path / "components" / name).mkdir(parents=True)
        (tmp_path / "components" / name / "__init__.py").write_text(f'"""{doc}"""\n')
        (tmp_path / "components" / name / "m.py").write_text(module_doc + body)
    found = arch.packages(tmp_path / "components")
    assert [(p.name, p.imports) for p in found] == [("core", ()), ("edge", ("core",)), ("api", ("edge",))]
    assert found[0].summary == "Core things." and found[0].modules[0].summary == "First, with a path components/x.py."


def test_every_relative_link_and_image_resolves() -> None:
    broken = []
    for doc in DOCS:
        for target in links(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path) if path else doc
            if not resolved.exists():
                broken.append(f"{rel(doc)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{rel(doc)}: {target} (no such heading)")
    assert broken == []


def test_every_repository_path_and_test_the_docs_name_exists() -> None:
    missing = []
    for doc in DOCS:
        for named, test in REPO_PATH.findall(doc.read_text()):
            for path in expand(named.rstrip(".,")):
                found = sorted(ROOT.glob(path)) if "*" in path else [ROOT / path] if (ROOT / path).exists() else []
                if not found:
                    missing.append(f"{rel(doc)}: {path}")
                elif test and not any(re.search(rf"^(async )?def {test}\(", f.read_text(), re.M) for f in found):
                    missing.append(f"{rel(doc)}: {path}::{test}")
    assert missing == []


def test_every_section_the_docs_cite_by_name_exists() -> None:
    """`docs/x.md, "Heading"` (and `README, "Heading"`) in the docs and in the code's comments:
    a heading of that file, or a bold paragraph title, starts so."""
    cited = [*DOCS, ROOT / "harness/settings_reference.py", *sorted((ROOT / "components").rglob("*.py"))]
    missing = []
    for source in cited:
        text = re.sub(r"\s+", " ", source.read_text())
        for name, section in re.findall(r"\b(README|docs/[\w-]+\.md),? \"([^\"]+)\"", text):
            target = ROOT / ("README.md" if name == "README" else name)
            # A section is a heading or a paragraph that opens with a bold title.
            titles = headings(target) + re.findall(r"^\*\*([^*]+)\*\*", target.read_text(), re.M)
            if not any(title.lower().startswith(section.lower()) for title in titles):
                missing.append(f"{rel(source)}: {name}, \"{section}\"")
    assert missing == []


def raised_codes() -> set[str]:
    """Every `code="..."` passed to an error anywhere in components/."""
    found = set()
    for path in (ROOT / "components").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.Constant):
                found.add(node.value.value)
    return {code for code in found if isinstance(code, str)}


def error_classes() -> list[type[errors.ServiceError]]:
    found, todo = [], [errors.ServiceError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_every_error_type_and_code_the_code_raises_is_in_the_error_table() -> None:
    table = "\n".join(line for line in (ROOT / "docs/errors.md").read_text().splitlines() if line.startswith("| "))
    named = set(re.findall(r"`(\w+)`", table))
    classes = error_classes()
    assert len(classes) > 10
    codes = raised_codes() | {cls.code for cls in classes if cls.code}
    types = {cls.type for cls in classes}
    assert sorted(codes - named) == [] and sorted(types - named) == []


def test_every_setting_the_docs_name_exists() -> None:
    settings = {row[1] for row in settings_table()}
    unknown = {f"{rel(doc)}: {name}" for doc in DOCS
               for name in re.findall(r"`([A-Z][A-Z0-9_]{3,})(?:=[^`]*)?`", without_generated(doc.read_text()))
               if name not in settings | NOT_OUR_SETTINGS}
    assert sorted(unknown) == []


def test_readme_is_short_with_contents() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    assert "**Contents:**" in readme
    headings = anchors(ROOT / "README.md")
    assert all(anchor in headings for anchor in re.findall(r"\]\(#([\w-]+)\)", readme))


def test_every_figure_in_the_readme_performance_section_links_its_file() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Performance\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert rows
    for row in rows:
        result = row.split(" | ")[1]
        assert "not yet measured" in result or "](docs/benchmarks/" in result, row


def test_every_make_target_the_docs_name_exists() -> None:
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    for doc in DOCS:
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


def test_the_expansion_of_brace_paths() -> None:
    assert expand("docs/benchmarks/results.{json,md}") == ["docs/benchmarks/results.json", "docs/benchmarks/results.md"]
    assert expand("a/b.py") == ["a/b.py"]
