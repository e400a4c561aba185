"""The documentation's links: every relative Markdown link and image in README.md, docs/**/*.md and
configs/**/README.md names a file that exists (and a heading that exists, where it gives an #anchor), the Python
examples parse and import what they name, and the README stays a README (at most 200 lines; the rest lives in
docs/)."""

from __future__ import annotations

import ast
import importlib
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200

# [text](target) and ![alt](target), with an optional "title"; the text may hold one level of brackets.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SOURCE = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def documentation_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "configs").rglob("README.md"))]
    return [f for f in files if f.is_file()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, inline code removed: code is not a link."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, INLINE_CODE.sub("", line)))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: rendered text, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, repeated headings numbered as GitHub numbers them (-1, -2)."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            found.add(slug if count == 0 else f"{slug}-{count}")
            seen[slug] = count + 1
    return found


def local_targets(path: Path) -> list[tuple[int, str]]:
    """The relative link and image targets of a Markdown file (web addresses and mail links left out)."""
    targets = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(line) + HTML_SOURCE.findall(line):
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                targets.append((number, target))
    return targets


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for number, target in local_targets(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where} (no heading with that anchor)")
    return problems


@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_the_check_finds_a_broken_link_and_a_wrong_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# A heading (`with code`)\n\n## A heading (`with code`)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[fine](other.md#a-heading-with-code) [repeat](other.md#a-heading-with-code-1) ![img](missing.png)\n"
        "[bad anchor](other.md#nope) [web](https://example.org/x.md) `[code](ignored.md)`\n"
        "```\n[fenced](ignored.md)\n```\n[self](#nowhere)\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "page.md:1: missing.png (no such file)",
        "page.md:2: other.md#nope (no heading with that anchor)",
        "page.md:6: #nowhere (no heading with that anchor)",
    ]


def test_the_documentation_set_is_found():
    names = {str(p.relative_to(ROOT)) for p in documentation_files()}
    assert {"README.md", "docs/index.md", "configs/train/README.md"} <= names


def test_readme_is_at_most_200_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def python_examples() -> list[tuple[str, str]]:
    """(where, code) of every ```python block of the documentation."""
    examples = []
    for path in documentation_files():
        for number, code in enumerate(
            re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
        ):
            examples.append((f"{path.relative_to(ROOT)}#{number}", code))
    return examples


@pytest.mark.parametrize("where, code", python_examples(), ids=[w for w, _ in python_examples()])
def test_python_examples_parse_and_their_imports_exist(where, code):
    """An example that names a moved or renamed function fails here, not in a reader's hands."""
    tree = ast.parse(code, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
            assert missing == [], f"{where}: {node.module} has no {missing}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


def test_the_python_examples_are_found():
    assert {where.split("#")[0] for where, _ in python_examples()} >= {"README.md", "docs/python-api.md"}
