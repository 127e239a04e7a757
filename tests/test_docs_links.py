"""Every relative link of the README and docs/ leads somewhere: the file (or folder) exists and, for a
``#section`` of a markdown page, so does the heading (GitHub's anchor rule)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _prose(text: str) -> str:
    """The text without code blocks and HTML comments (links there are not links)."""
    return _COMMENT.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    """The targets of the markdown links ``[text](target)`` in ``text``, outside code."""
    return _LINK.findall(_CODE.sub("", _prose(text)))


def anchors(text: str) -> set[str]:
    """The ``#anchors`` GitHub gives the headings of a markdown page (``-1``, ``-2`` for repeats)."""
    out: set[str] = set()
    for heading in _HEADING.findall(_prose(text)):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        base = re.sub(r"[^\w\- ]", "", plain.strip().lower()).replace(" ", "-")
        slug, n = base, 0
        while slug in out:
            n += 1
            slug = f"{base}-{n}"
        out.add(slug)
    return out


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` that lead nowhere, as ``target (why)``."""
    text = page.read_text(encoding="utf-8")
    wrong = []
    for target in links(text):
        if _SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            wrong.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            wrong.append(f"{target} (no such section)")
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    assert broken_links(page) == []


def test_checker_reads_links_and_anchors(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n## Scale-out: `DDP`, SLURM\n## Notes\n## Notes\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#scale-out-ddp-slurm) [ok](docs/a.md#notes-1) [ok](https://x.org/y) [self](#top)\n"
        "[missing](docs/b.md) [bad section](docs/a.md#nope) `[code](c.md)`\n"
        "```\n[fenced](d.md)\n```\n<!-- [comment](e.md) -->\n# Top\n"
    )
    assert broken_links(page) == ["docs/b.md (no such file)", "docs/a.md#nope (no such section)"]
