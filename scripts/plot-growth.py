#!/usr/bin/env python3
"""Draws the growth curves of `ec-bench growth --out FILE` as SVG charts.

One chart per curve and measure: the median over trials of each system at each point, one
line per system (ours, Redis Streams, NATS JetStream), a logarithmic x axis where the points
span decades (and a logarithmic y axis where the values do), labelled axes with units, a
legend, and the run's date and commit in the subtitle. Failed and skipped measurements are
left out; a point measured on a busy machine (CONTENDED) is drawn hollow.

Usage: scripts/plot-growth.py growth.jsonl [--out docs/img/growth/] [--commit REV]
       scripts/plot-growth.py --self-test
  --commit names the build that ran (default: `git describe --always --dirty` here).

Needs only Python 3's standard library.
"""

import argparse
import datetime
import html
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 84, 180, 70, 60
COLORS = {"ec": "#d6336c", "redis": "#1c7ed6", "jetstream": "#37b24d"}
NAMES = {"ec": "Event Catcher", "redis": "Redis Streams", "jetstream": "NATS JetStream"}
ORDER = ["ec", "redis", "jetstream"]

# (file, scenario, title, x label, y label, [(metric, line label suffix, dash)], y log)
CHARTS = [
    ("ids-throughput.svg", "growth-ids", "Publish throughput vs data IDs written at once",
     "data IDs written concurrently", "events/s", [("ev_per_s", "", None)], False),
    ("ids-cpu.svg", "growth-ids", "Server CPU per event vs data IDs written at once",
     "data IDs written concurrently", "server CPU µs / event",
     [("server_cpu_us_per_ev", "", None)], False),
    ("ids-create.svg", "growth-ids", "Data IDs created a second vs data IDs created",
     "data IDs created (one event each, 100 at a time)", "data IDs / s",
     [("create_ids_per_s", "", None)], False),
    ("followers-latency.svg", "growth-followers",
     "End-to-end delivery latency vs followers of one data ID",
     "followers (one connection each)", "delivery latency µs",
     [("delivery_p50_us", " p50", None), ("delivery_p99_us", " p99", "6,4")], True),
    ("followers-cpu.svg", "growth-followers", "Server CPU per delivered event vs followers",
     "followers (one connection each)", "server CPU µs / delivery",
     [("server_cpu_us_per_delivery", "", None)], True),
    ("size-events.svg", "growth-size", "Publish throughput vs event size (events/s)",
     "event size, bytes", "events/s", [("ev_per_s", "", None)], True),
    ("size-bytes.svg", "growth-size", "Publish throughput vs event size (MB/s)",
     "event size, bytes", "MB/s", [("mb_per_s", "", None)], True),
    ("replay.svg", "growth-replay", "Replay from offset 0 vs log size",
     "events in the log (100 B each)", "events/s", [("ev_per_s", "", None)], False),
]


# --- scales ----------------------------------------------------------------------------

def spans_decades(values):
    """True if the positive values span at least two decades (then a log axis reads best)."""
    pos = [v for v in values if v > 0]
    return bool(pos) and max(pos) / min(pos) >= 100


def nice_step(span, target=5):
    """A step of 1, 2 or 5 times a power of ten giving about `target` intervals."""
    if span <= 0:
        return 1.0
    raw = span / target
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def linear_ticks(lo, hi):
    """Ticks from 0 (or below lo) up to at least hi: (axis min, axis max, ticks)."""
    lo = min(0.0, lo)
    if hi <= lo:
        hi = lo + 1
    step = nice_step(hi - lo)
    start = math.floor(lo / step) * step
    end = math.ceil(hi / step) * step
    ticks, t = [], start
    while t <= end + step / 2:
        ticks.append(round(t, 10))
        t += step
    return start, end, ticks


def log_ticks(lo, hi):
    """Powers of ten around [lo, hi] (lo > 0): (axis min, axis max, ticks)."""
    a = math.floor(math.log10(lo))
    b = math.ceil(math.log10(hi))
    if a == b:
        b += 1
    ticks = [10.0 ** e for e in range(a, b + 1)]
    return ticks[0], ticks[-1], ticks


class Scale:
    """Maps data values in [lo, hi] onto pixels [p0, p1], linearly or logarithmically."""

    def __init__(self, lo, hi, p0, p1, log):
        self.lo, self.hi, self.p0, self.p1, self.log = lo, hi, p0, p1, log

    def __call__(self, v):
        if self.log:
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return self.p0 + f * (self.p1 - self.p0)


def human(v):
    """1500 -> 1.5k, 2000000 -> 2M, 65536 -> 64Ki when binary (sizes)."""
    if v >= 1024 and v == int(v) and int(v) & (int(v) - 1) == 0:
        if v >= 1 << 20:
            return f"{v / (1 << 20):g}Mi"
        return f"{v / 1024:g}Ki"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    if v == int(v):
        return str(int(v))
    return f"{v:.3g}"


# --- data ------------------------------------------------------------------------------

def load(path):
    """The records of a JSON-lines file that measured something."""
    records = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            sys.exit(f"{path} line {n} is not JSON ({e}); pass the file written by ec-bench --out")
        if r.get("skipped") or r.get("failed") or not r.get("metrics"):
            continue
        records.append(r)
    return records


def series(records, scenario, metric):
    """{system: [(x, median, contended)]} over trials, sorted by x."""
    groups = {}
    for r in records:
        if r.get("scenario") != scenario or metric not in r["metrics"]:
            continue
        x = (r.get("params") or {}).get("x")
        if x is None:
            continue
        key = (r["system"], x)
        groups.setdefault(key, ([], False))
        values, contended = groups[key]
        values.append(r["metrics"][metric])
        groups[key] = (values, contended or r.get("contended", False))
    out = {}
    for (system, x), (values, contended) in groups.items():
        out.setdefault(system, []).append((x, statistics.median(values), contended))
    for pts in out.values():
        pts.sort()
    return out


def systems_in(found):
    return [s for s in ORDER if s in found] + sorted(s for s in found if s not in ORDER)


# --- drawing ---------------------------------------------------------------------------

def svg_open(title, subtitle):
    esc = html.escape
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="26" font-size="16" font-weight="bold">{esc(title)}</text>',
        f'<text x="{LEFT}" y="46" font-size="11" fill="#555">{esc(subtitle)}</text>',
    ]


def axes(parts, xs, ys, xlabel, ylabel):
    """Draws the frame, grid, ticks and labels; returns the two scales."""
    x0, x1, xt, _ = xs
    y0, y1, yt, _ = ys
    px0, px1, py0, py1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    sx = Scale(x0, x1, px0, px1, xs[3])
    sy = Scale(y0, y1, py0, py1, ys[3])
    for t in yt:
        y = sy(t)
        parts.append(f'<line x1="{px0}" y1="{y:.1f}" x2="{px1}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{px0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
                     f'{human(t)}</text>')
    for t in xt:
        x = sx(t)
        parts.append(f'<line x1="{x:.1f}" y1="{py0}" x2="{x:.1f}" y2="{py1}" stroke="#f0f0f0"/>')
        parts.append(f'<text x="{x:.1f}" y="{py0 + 16}" font-size="11" text-anchor="middle">'
                     f'{human(t)}</text>')
    parts.append(f'<rect x="{px0}" y="{py1}" width="{px1 - px0}" height="{py0 - py1}" '
                 f'fill="none" stroke="#333"/>')
    parts.append(f'<text x="{(px0 + px1) / 2:.0f}" y="{HEIGHT - 16}" font-size="12" '
                 f'text-anchor="middle">{html.escape(xlabel)}'
                 f'{" (log scale)" if xs[3] else ""}</text>')
    parts.append(f'<text x="18" y="{(py0 + py1) / 2:.0f}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 18 {(py0 + py1) / 2:.0f})">{html.escape(ylabel)}'
                 f'{" (log scale)" if ys[3] else ""}</text>')
    return sx, sy


def legend(parts, entries):
    x, y = WIDTH - RIGHT + 14, TOP + 6
    for label, color, dash in entries:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{color}" '
                     f'stroke-width="2.5"{d}/>')
        parts.append(f'<text x="{x + 28}" y="{y + 4}" font-size="11">{html.escape(label)}</text>')
        y += 18


def axis(values, log):
    lo, hi = min(values), max(values)
    if log:
        a, b, t = log_ticks(lo, hi)
    else:
        a, b, t = linear_ticks(lo, hi)
    return a, b, t, log


def line_chart(title, subtitle, xlabel, ylabel, lines, ylog):
    """lines: [(label, color, dash, [(x, y, hollow)])]. Returns the SVG text."""
    xs = [p[0] for _, _, _, pts in lines for p in pts]
    ys = [p[1] for _, _, _, pts in lines for p in pts]
    parts = svg_open(title, subtitle)
    if not xs:
        parts.append(f'<text x="{LEFT}" y="{HEIGHT / 2}">no data</text></svg>')
        return "\n".join(parts)
    xlog = spans_decades(xs) and min(xs) > 0
    ylog = ylog and min(ys) > 0 and spans_decades(ys)
    sx, sy = axes(parts, axis(xs, xlog), axis(ys, ylog), xlabel, ylabel)
    for label, color, dash, pts in lines:
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                        for i, (x, y, _) in enumerate(pts))
        d = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2.5"{d}/>')
        for x, y, hollow in pts:
            fill = "white" if hollow else color
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{fill}" '
                         f'stroke="{color}" stroke-width="1.5"><title>{html.escape(label)}: '
                         f'{human(y)} at {human(x)}</title></circle>')
    legend(parts, [(label, color, dash) for label, color, dash, _ in lines])
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(title, subtitle, ylabel, groups, systems):
    """groups: [(group label, {system: value})]; bars per system, log y, values printed."""
    parts = svg_open(title, subtitle)
    values = [v for _, by in groups for v in by.values() if v > 0]
    if not values:
        parts.append(f'<text x="{LEFT}" y="{HEIGHT / 2}">no data</text></svg>')
        return "\n".join(parts)
    y0, y1, yt = log_ticks(min(values), max(values))
    px0, px1, py0, py1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    sy = Scale(y0, y1, py0, py1, True)
    for t in yt:
        y = sy(t)
        parts.append(f'<line x1="{px0}" y1="{y:.1f}" x2="{px1}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{px0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
                     f'{human(t)}</text>')
    gw = (px1 - px0) / len(groups)
    bw = gw * 0.7 / max(1, len(systems))
    for g, (label, by) in enumerate(groups):
        gx = px0 + g * gw + gw * 0.15
        for i, s in enumerate(systems):
            v = by.get(s)
            if v is None or v <= 0:
                continue
            x, y = gx + i * bw, sy(v)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw * 0.9:.1f}" '
                         f'height="{py0 - y:.1f}" fill="{COLORS.get(s, "#888")}"/>')
            parts.append(f'<text x="{x + bw * 0.45:.1f}" y="{y - 4:.1f}" font-size="11" '
                         f'text-anchor="middle">{human(v)}</text>')
        parts.append(f'<text x="{px0 + (g + 0.5) * gw:.1f}" y="{py0 + 18}" font-size="12" '
                     f'text-anchor="middle">{html.escape(label)}</text>')
    parts.append(f'<rect x="{px0}" y="{py1}" width="{px1 - px0}" height="{py0 - py1}" '
                 f'fill="none" stroke="#333"/>')
    parts.append(f'<text x="18" y="{(py0 + py1) / 2:.0f}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 18 {(py0 + py1) / 2:.0f})">{html.escape(ylabel)} '
                 f'(log scale)</text>')
    legend(parts, [(NAMES.get(s, s), COLORS.get(s, "#888"), None) for s in systems])
    parts.append("</svg>")
    return "\n".join(parts)


# --- main ------------------------------------------------------------------------------

def subtitle_of(records, commit):
    runs = sorted({r.get("run", 0) for r in records})
    when = ", ".join(
        datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        for t in runs[:2])
    trials = max((r.get("trial", 1) for r in records), default=1)
    busy = " · hollow = CONTENDED" if any(r.get("contended") for r in records) else ""
    return (f"ec-bench growth, run {when}, commit {commit}, median of {trials} trial(s), "
            f"tier A{busy}")


def render_all(records, commit):
    """{file name: SVG text} for every chart with data."""
    sub = subtitle_of(records, commit)
    out = {}
    for name, scenario, title, xlabel, ylabel, metrics, ylog in CHARTS:
        lines = []
        for metric, suffix, dash in metrics:
            found = series(records, scenario, metric)
            for s in systems_in(found):
                lines.append((NAMES.get(s, s) + suffix, COLORS.get(s, "#888"), dash,
                              [(x, y, c) for x, y, c in found[s] if y > 0 or not ylog]))
        if lines:
            out[name] = line_chart(title, sub, xlabel, ylabel, lines, ylog)
    per_id = series(records, "growth-memory", "bytes_per_id")
    per_follower = series(records, "growth-memory", "bytes_per_follower")
    if per_id or per_follower:
        systems = systems_in({**per_id, **per_follower})
        pick = lambda found: {s: pts[0][1] for s, pts in found.items() if pts}  # noqa: E731
        ids = next((pts[0][0] for pts in per_id.values() if pts), "?")
        followers = next((r["params"].get("followers") for r in records
                          if r.get("scenario") == "growth-memory"), "?")
        out["memory.svg"] = bar_chart(
            "Server memory per data ID and per follower", sub, "bytes of RSS",
            [(f"per data ID ({human(ids)} with 1 event each)", pick(per_id)),
             (f"per follower ({followers} attached)", pick(per_follower))],
            systems)
    return out


def git_commit():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def self_test():
    import unittest

    class T(unittest.TestCase):
        def test_log_scale_maps_decades_evenly(self):
            s = Scale(1, 10_000, 0, 400, True)
            self.assertAlmostEqual(s(1), 0)
            self.assertAlmostEqual(s(100), 200)
            self.assertAlmostEqual(s(10_000), 400)

        def test_linear_scale_inverts_for_svg_y(self):
            s = Scale(0, 100, 380, 70, False)
            self.assertAlmostEqual(s(0), 380)
            self.assertAlmostEqual(s(50), 225)

        def test_ticks(self):
            self.assertEqual(log_ticks(1, 10_000), (1, 10_000, [1, 10, 100, 1000, 10_000]))
            self.assertEqual(log_ticks(3, 7)[2], [1, 10])
            lo, hi, ticks = linear_ticks(0, 437)
            self.assertEqual((lo, hi), (0, 500))
            self.assertEqual(ticks, [0, 100, 200, 300, 400, 500])
            self.assertEqual(nice_step(7, 5), 2)

        def test_decades_and_labels(self):
            self.assertTrue(spans_decades([1, 100, 10_000]))
            self.assertFalse(spans_decades([1_000_000, 10_000_000]))
            self.assertEqual(human(65536), "64Ki")
            self.assertEqual(human(1 << 20), "1Mi")
            self.assertEqual(human(10_000), "10k")
            self.assertEqual(human(2.5), "2.5")

        def test_series_takes_medians_and_skips_failures(self):
            recs = [
                {"scenario": "growth-ids", "system": "ec", "params": {"x": 1},
                 "metrics": {"ev_per_s": v}, "trial": t, "contended": t == 3}
                for t, v in ((1, 10), (2, 30), (3, 20))
            ]
            self.assertEqual(series(recs, "growth-ids", "ev_per_s"), {"ec": [(1, 20, True)]})
            charts = render_all(recs, "abc1234")
            self.assertIn("ids-throughput.svg", charts)
            self.assertIn("commit abc1234", charts["ids-throughput.svg"])

    result = unittest.TextTestRunner(verbosity=1).run(
        unittest.defaultTestLoader.loadTestsFromTestCase(T))
    return 0 if result.wasSuccessful() else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", nargs="?", help="JSON lines written by ec-bench growth --out")
    ap.add_argument("--out", default="docs/img/growth", help="directory for the SVG files")
    ap.add_argument("--commit", default=None, help="the build that ran (default: git describe)")
    ap.add_argument("--self-test", action="store_true", help="run the unit tests and exit")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.file:
        ap.error("give the JSON-lines file (or --self-test)")
    records = load(args.file)
    if not any(r.get("scenario", "").startswith("growth-") for r in records):
        sys.exit(f"{args.file} holds no growth records; write it with `ec-bench growth --out`")
    charts = render_all(records, args.commit or git_commit())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, svg in charts.items():
        (out / name).write_text(svg + "\n")
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
