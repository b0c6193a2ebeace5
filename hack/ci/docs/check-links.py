#!/usr/bin/env python3
"""Checks every relative link in README.md and docs/src/*.md: the file exists and, with a
#fragment, the heading exists in it (mdBook's and GitHub's slug rule). External links
(http:, https:, mailto:) are not fetched: CI runs offline. Exit 1 listing every broken link."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def slug(heading: str) -> str:
    s = re.sub(r"`", "", heading.strip().lower())
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def prose(path: pathlib.Path):
    """Lines outside fenced code blocks."""
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            yield line


def anchors(path: pathlib.Path) -> set:
    out = set()
    for line in prose(path):
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            out.add(slug(m.group(1)))
    return out


def main() -> int:
    files = [ROOT / "README.md", *sorted((ROOT / "docs" / "src").glob("*.md"))]
    broken = []
    for f in files:
        for n, line in enumerate(prose(f), 1):
            # a code span is not a link (the reference quotes CEL regexes such as `[a-z]([-a-z]*)`)
            line = re.sub(r"`[^`]*`", "", line)
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue
                path, _, frag = target.partition("#")
                dest = (f.parent / path).resolve() if path else f
                if not dest.exists():
                    broken.append(f"{f.relative_to(ROOT)}: link to {target}: no such file")
                elif frag and dest.suffix == ".md" and frag not in anchors(dest):
                    broken.append(f"{f.relative_to(ROOT)}: link to {target}: no heading #{frag}")
    for b in broken:
        print(b, file=sys.stderr)
    print(f"checked links in {len(files)} files: {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
