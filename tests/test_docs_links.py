"""Every relative link in README.md and docs/ leads somewhere.

A link is checked when it is not a URL: its file (or folder) must exist, relative to the
page that holds it, and a ``#fragment`` on a Markdown target must name a heading of that
page (GitHub's anchor for it) or an explicit ``<a id>``. Links inside code are not links.
Strict on purpose: a page that the manual links must exist, even as a stub.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# [text](target "title"), images too; the text may hold one level of brackets.
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_HREF = re.compile(r"<a\s[^>]*href=\"([^\"]+)\"", re.IGNORECASE)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
_EXPLICIT_ANCHOR = re.compile(r"<a\s[^>]*(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _prose(text: str) -> str:
    """The page without fenced code, code spans and HTML comments."""
    return _CODE_SPAN.sub("", _FENCE.sub("", _COMMENT.sub("", text)))


def links(text: str) -> Iterator[str]:
    prose = _prose(text)
    for pattern in (_INLINE, _REFERENCE, _HREF):
        for match in pattern.finditer(prose):
            yield match.group(1)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set(_EXPLICIT_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    problems: list[str] = []
    for target in links(text):
        if _EXTERNAL.match(target):
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file {dest}")
            continue
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text("utf-8")):
            problems.append(f"{target}: no heading or anchor #{fragment} in {dest.name}")
    return problems


def test_the_checker_finds_what_it_should(tmp_path: Path) -> None:
    # The checker itself: a test of links that passes on any page would prove nothing.
    (tmp_path / "there.md").write_text('# A heading, with `code`\n<a id="x"></a>\n')
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-with-code) [ok](there.md#x) [ok](#top)\n"
        "# Top\n[ok](https://example.com/missing) `[not a link](gone.md)`\n"
        "```\n[not a link](gone.md)\n```\n<!-- [not a link](gone.md) -->\n"
        "[bad](missing.md) [bad](there.md#nowhere)\n[ref]: also-missing.md\n"
    )
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert any("missing.md: no such file" in p for p in problems)
    assert any("#nowhere" in p for p in problems)
    assert any("also-missing.md" in p for p in problems)


def test_github_slugs() -> None:
    assert github_slug("Stopping: SIGTERM") == "stopping-sigterm"
    assert github_slug("Deploy on Kubernetes with KEDA") == "deploy-on-kubernetes-with-keda"
    assert github_slug("The `statecast` package (v2)") == "the-statecast-package-v2"


def test_the_manual_exists() -> None:
    names = {p.name for p in pages()}
    assert {"README.md", "index.md", "configuration.md", "metrics.md", "routes.md"} <= names
    assert {"models.md", "deploy.md", "operations.md"} <= names


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []
