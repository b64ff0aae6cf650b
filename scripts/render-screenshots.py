#!/usr/bin/env python3
"""Renders the console's insta snapshots as SVG screenshots for the README.

The snapshots (console/src/ui/snapshots/*.snap) are what the render tests draw on ratatui's
TestBackend: the exact characters of every cell. They carry no colours, so this script
colours them the way the console's theme does, by what the text says (a status glyph and
its word, FOLLOWING / PAUSED, a GAP, the key hints). Every character is placed on its
terminal column, so box drawing and wide symbols line up whatever the viewer's font.

Usage: scripts/render-screenshots.py [--check]
  writes docs/img/console-*.svg from the snapshots listed in SHOTS;
  --check writes nothing and exits 1 if an SVG is missing or differs from what the
  snapshots give now (run it after `cargo insta review`, or in CI).

Needs only Python 3's standard library; nothing is fetched.
"""

import html
import re
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS = ROOT / "console" / "src" / "ui" / "snapshots"
OUT = ROOT / "docs" / "img"

# (snapshot name without the ec_console__ui__tests__ prefix, output file, alt text)
SHOTS = [
    ("mappings_120x40", "console-mappings.svg", "Mappings view"),
    ("health_120x40", "console-health.svg", "Health view"),
    ("tail_follow_120x40", "console-tail.svg", "Tail view, following, after a failover"),
    ("tail_paused_gap_120x40", "console-tail-paused.svg", "Tail view, paused, with a gap"),
    ("replication_120x40", "console-replication.svg", "Replication view"),
    ("form_add_80x24", "console-form.svg", "Add-mapping form with live validation"),
]

CELL_W = 8.4  # px per terminal column at FONT_SIZE
LINE_H = 18  # px per terminal row
FONT_SIZE = 14
PAD = 10

BG = "#1d1f21"
SELECTED = "#3a3f4b"
FG = "#c5c8c6"
COLOURS = {
    "dim": "#7f8487",
    "ok": "#8fbf5f",
    "warn": "#e6b450",
    "error": "#f0675d",
    "title": "#62b3e8",
    "key": "#62b3e8",
    "header": "#e0e0e0",
}

# What the theme colours, found in the text: (pattern, style). Later rules win.
RULES = [
    (r"[─│┌┐└┘├┤┬┴┼]+", "dim"),
    (r"\b\d\d:\d\d:\d\d(\.\d+)? ?(UTC)?", "dim"),
    (r"^ ec-console ", "title"),
    (r"\b[1-4] (Mappings|Health|Tail|Replication)\b", "dim"),
    (r"● up", "ok"),
    (r"… connecting", "warn"),
    (r"✗ (DOWN|PERMISSION DENIED)[^│]*", "error"),
    (r"✓ ?[a-z]*\w*", "ok"),
    (r"✗ ?\w*", "error"),
    (r"! ?\w+", "warn"),
    (r"– ?\w+", "dim"),
    (r"\?node\w*", "warn"),
    (r"\d+ ⚡\w+", "error"),
    (r"▶ FOLLOWING", "ok"),
    (r"❚❚ PAUSED \+[\d,]+ new", "warn"),
    (r"✗ GAP[^│]*", "error"),
    (r"✓ [\d,]+ events? in order, no gap", "ok"),
    (r"\S+ lost → resumed[^│]*|\S+ lost, resuming…", "warn"),
    (r"⚠[^│]*", "warn"),
    (r"(?<=│)(DATA ID|NODE|OFFSET)\b.*?(?=│)", "header"),
]

# The last screen line holds the key hints: key names coloured, the rest dim.
KEY_HINT = re.compile(r"(?:^| )(\S+) (\w[\w/-]*)")

LINE = re.compile(r'^"(.*)"(?: Hidden by multi-width symbols: \[.*\])?$')


def width(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def screen_lines(snap: Path) -> list[str]:
    text = snap.read_text(encoding="utf-8")
    body = text.split("---\n", 2)[2]
    lines = []
    for raw in body.splitlines():
        m = LINE.match(raw)
        if m:
            lines.append(m.group(1))
    if not lines:
        sys.exit(f"{snap}: no screen lines found; is it a TestBackend snapshot?")
    return lines


def styles_of(line: str, last: bool) -> list[str | None]:
    style: list[str | None] = [None] * len(line)
    if last:
        for i in range(len(line)):
            style[i] = "dim"
        for m in KEY_HINT.finditer(line):
            for i in range(m.start(1), m.end(1)):
                style[i] = "key"
        return style
    for pattern, name in RULES:
        for m in re.finditer(pattern, line):
            for i in range(m.start(), m.end()):
                style[i] = name
    return style


def render(lines: list[str], title: str) -> str:
    cols = max(sum(width(c) for c in line) for line in lines)
    w = round(cols * CELL_W + 2 * PAD)
    h = len(lines) * LINE_H + 2 * PAD
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
        f'<rect width="100%" height="100%" rx="6" fill="{BG}"/>',
        f'<g font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
        f'font-size="{FONT_SIZE}" fill="{FG}" xml:space="preserve">',
    ]
    for row, line in enumerate(lines):
        style = styles_of(line, row == len(lines) - 1)
        y = PAD + row * LINE_H + LINE_H * 0.75
        if line.startswith("│▶"):
            # The selected row of a paused table is drawn reversed by the console.
            out.append(
                f'<rect x="{PAD + CELL_W:.1f}" y="{PAD + row * LINE_H}" '
                f'width="{(cols - 2) * CELL_W:.1f}" height="{LINE_H}" fill="{SELECTED}"/>'
            )
        col = 0
        runs = []  # [start column, style, text, end column]: one word in one style
        for ch, st in zip(line, style):
            if ch != " ":
                if runs and runs[-1][1] == st and runs[-1][3] == col:
                    runs[-1][2] += ch
                else:
                    runs.append([col, st, ch, col])
                runs[-1][3] = col + width(ch)
            col += width(ch)
        parts = []
        for start, st, text, _ in runs:
            # Each run at its own column: glyph widths of the viewer's font cannot shift it.
            x = PAD + start * CELL_W
            colour = f' fill="{COLOURS[st]}"' if st else ""
            weight = ' font-weight="bold"' if st in ("header", "title") else ""
            parts.append(
                f'<tspan x="{x:.1f}"{colour}{weight}>{html.escape(text)}</tspan>'
            )
        if parts:
            out.append(f'<text y="{y:.1f}">{"".join(parts)}</text>')
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, file, title in SHOTS:
        snap = SNAPSHOTS / f"ec_console__ui__tests__{name}.snap"
        if not snap.exists():
            sys.exit(f"{snap} is missing; run the console's render tests (cargo test -p ec-console)")
        svg = render(screen_lines(snap), f"ec-console: {title}")
        target = OUT / file
        if check:
            if not target.exists() or target.read_text(encoding="utf-8") != svg:
                stale.append(str(target.relative_to(ROOT)))
            continue
        OUT.mkdir(parents=True, exist_ok=True)
        target.write_text(svg, encoding="utf-8")
        print(target.relative_to(ROOT))
    if stale:
        print("out of date (run scripts/render-screenshots.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
