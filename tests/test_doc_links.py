"""Every relative link and image in the README and ``docs/`` points at a file that exists, and every
``file.md#anchor`` at an anchor that file defines (an ``<a id=...>`` or a heading's GitHub slug).

A report copied into ``docs/results/`` under a new name keeps the figure link its run folder gave it;
this is what catches that.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def anchors(text: str) -> set[str]:
    ids = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", text), re.MULTILINE):
        ids.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return ids


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    """``target: why`` for each relative link of ``doc`` (outside code fences) that does not resolve."""
    bad = []
    for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            continue
        path, _, fragment = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}: no anchor {fragment!r} in {dest.relative_to(root)}")
    return bad


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    assert not broken_links(doc), f"{doc.relative_to(ROOT)}: {broken_links(doc)}"


def test_a_broken_figure_link_and_anchor_are_caught(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text('# Top part\n<a id="kept"></a>\n', encoding="utf-8")
    doc = tmp_path / "a.md"
    doc.write_text(
        "![fig](missing.png) [ok](b.md#kept) [ok](b.md#top-part) [bad](b.md#gone) [web](https://x.org/y)\n"
        "```\n[in a fence](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(doc, tmp_path.resolve()) == [
        "missing.png: no such file",
        "b.md#gone: no anchor 'gone' in b.md",
    ]
