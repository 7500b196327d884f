"""README.md stays a short front door, and no link of README.md or docs/ leads nowhere."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 12 * 1024

# [text](target) and ![alt](target), outside code; <http://...> autolinks are never relative.
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """``text`` without fenced blocks and inline code (a link shown as code is not a link)."""
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())   # a link: its text
    return "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN"
                   ).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]      # http:, https:, mailto:


def test_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size < README_MAX_BYTES, (
        f"README.md is {size:,} bytes (at most {README_MAX_BYTES:,}): what it is, the two "
        "commands, a picture, how it works and where to read on; the rest belongs in docs/")


def test_every_relative_link_of_readme_and_docs_resolves():
    broken = []
    for page in PAGES:
        for target in relative_links(page):
            path, _, fragment = unquote(target).partition("#")
            dest = (page.parent / path).resolve() if path else page
            name = page.relative_to(ROOT)
            if not dest.exists():
                broken.append(f"{name}: {target} (no file {path})")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{name}: {target} (no heading #{fragment} in "
                              f"{dest.relative_to(ROOT)})")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


def test_the_link_checker_sees_links_and_headings():
    assert slug("Sites: several receivers, one flight per aircraft") == \
        "sites-several-receivers-one-flight-per-aircraft"
    assert slug("The read-only role `adsb_reader`") == "the-read-only-role-adsb_reader"
    assert slug("Wall clock stepped ±1 h (libfaketime, `ADSB_RECEIVER_CLOCK=wall`)") == \
        "wall-clock-stepped-1-h-libfaketime-adsb_receiver_clockwall"
    page = ("See [a](docs/a.md#x), ![p](img/p.png), <https://x.org/> and [w](https://x.org/).\n"
            "`[not](a link)`\n```\n[nor](this)\n```\n")
    assert LINK.findall(prose(page)) == ["docs/a.md#x", "img/p.png", "https://x.org/"]
