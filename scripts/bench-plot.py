#!/usr/bin/env python3
"""Draws docs/benchmarks.svg from one `make bench` run (build/bench/): start
latency of each front door beside its runc baseline, and the start time of
each of the density run's sandboxes. Plain SVG, no plotting library."""
import json
import os
import statistics
import sys


def medians(path):
    try:
        return {r["command"]: statistics.median(r["times"]) * 1000 for r in json.load(open(path))["results"]}
    except OSError:
        return {}


def main(out, svg_path):
    bars = []
    for name in ("run-true", "run-true-pool", "run-true-pool-b2b", "docker-run-true", "ctr-run-true", "exec-true"):
        bars += sorted(medians(os.path.join(out, name + ".json")).items())
    try:
        starts = [float(x) for x in open(os.path.join(out, "density-starts.txt"))]
    except OSError:
        starts = []
    width, bar_h, gap, left = 760, 22, 8, 230
    top = 40
    chart_h = len(bars) * (bar_h + gap)
    dens_top = top + chart_h + 70
    dens_h = 160 if starts else 0
    height = dens_top + dens_h + 50
    scale = (width - left - 80) / max([v for _, v in bars] + [1])
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="22" font-size="15" font-weight="bold">husk start latency, median ms (TCG, 2 cores); runc beside each</text>']
    for i, (name, v) in enumerate(bars):
        y = top + i * (bar_h + gap)
        colour = "#2b6cb0" if "husk" in name else "#a0aec0"
        svg.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{name}</text>')
        svg.append(f'<rect x="{left}" y="{y}" width="{max(v * scale, 1):.1f}" height="{bar_h}" fill="{colour}"/>')
        svg.append(f'<text x="{left + v * scale + 6:.1f}" y="{y + 15}">{v:.0f} ms</text>')
    if starts:
        svg.append(f'<text x="10" y="{dens_top - 20}" font-size="15" font-weight="bold">density: start time of each of {len(starts)} idle sandboxes, one after another (ms)</text>')
        peak = max(starts)
        step = (width - left - 80) / max(len(starts), 1)
        svg.append(f'<line x1="{left}" y1="{dens_top + dens_h}" x2="{width - 60}" y2="{dens_top + dens_h}" stroke="#555"/>')
        svg.append(f'<text x="{left - 8}" y="{dens_top + 10}" text-anchor="end">{peak:.0f} ms</text>')
        svg.append(f'<text x="{left - 8}" y="{dens_top + dens_h}" text-anchor="end">0</text>')
        for i, s in enumerate(starts):
            h = s / peak * dens_h
            svg.append(f'<rect x="{left + i * step:.1f}" y="{dens_top + dens_h - h:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}" fill="#2b6cb0"/>')
        svg.append(f'<text x="{left}" y="{dens_top + dens_h + 18}">sandbox 1</text>')
        svg.append(f'<text x="{width - 60}" y="{dens_top + dens_h + 18}" text-anchor="end">sandbox {len(starts)}</text>')
    svg.append('</svg>')
    with open(svg_path, "w") as f:
        f.write("\n".join(svg) + "\n")
    print(f"wrote {svg_path}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
