"""The documentation stays whole: the README is short, and every link in the README, docs/ and
results/ either points at a file of the repository or leaves it for a public web page."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "results").rglob("*.md")),
    ]


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("https://", "http://", "mailto:", "#")):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(root):
            broken.append(f"{target} (outside the repository)")
        elif not path.exists():
            broken.append(target)
    return broken


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_link_resolves():
    assert len(pages()) > 10
    assert {str(p.relative_to(ROOT)): broken_links(p) for p in pages() if broken_links(p)} == {}


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "[a](missing.md) [b](https://example.org) [c](#here) [d](there.md#x) [e](../../outside.md)"
    )
    assert broken_links(page, tmp_path) == ["missing.md", "../../outside.md (outside the repository)"]
