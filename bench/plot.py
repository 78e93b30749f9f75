"""Draw a bench results JSON as a log-scale bar chart, saved next to it as PNG.

    python -m bench.plot bench/results/2026-05-09_153012-W1.json

One group of bars per table, one bar per peer that was timed. The height is
the ratio ``peer min / tapegrad min`` (the dashed line at 1 is tapegrad;
above it tapegrad is faster). When a file has no tapegrad rows, the bars are
the min times in seconds instead. FAILED and ERROR rows are hatched.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PEER_ORDER = ("tapegrad", "torch", "torch.compile", "micrograd", "numpy", "njit", "jax", "autograd")


def _short(title):
    """'W3 elementwise …: forward+backward, n=1e+06' -> two short lines."""
    head, _, tail = title.partition(":")
    return f"{head.split()[0]}\n{tail.strip()}" if tail else head


def plot(json_path, png_path=None):
    with open(json_path) as f:
        data = json.load(f)
    tables = [t for ts in data["workloads"].values() for t in ts]
    use_ratio = any(r["ratio"] is not None for t in tables for r in t["rows"] if r["peer"] != "tapegrad")
    key = "ratio" if use_ratio else "min_s"
    peers = [p for p in PEER_ORDER
             if any(r["peer"] == p and r[key] is not None for t in tables for r in t["rows"])]
    if not tables or not peers:
        raise ValueError(f"{json_path}: nothing timed to plot")

    width = 0.8 / len(peers)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(tables) + 3), 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, peer in enumerate(peers):
        xs, ys, hatches = [], [], []
        for i, t in enumerate(tables):
            row = next((r for r in t["rows"] if r["peer"] == peer), None)
            if row is None or row[key] is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(row[key])
            hatches.append("//" if row["status"] in ("FAILED", "ERROR") else "")
        bars = ax.bar(xs, ys, width, label=peer, color=colors[j % len(colors)])
        for bar, h, y in zip(bars, hatches, ys):
            bar.set_hatch(h)
            label = f"{y:.2g}×" if use_ratio else f"{y:.2g}s"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_yscale("log")
    if use_ratio:
        ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_ylabel("peer min / tapegrad min  (>1: tapegrad faster)")
    else:
        ax.set_ylabel("min time per call (s)")
    ax.set_xticks(range(len(tables)))
    ax.set_xticklabels([_short(t["title"]) for t in tables], fontsize=8)
    m = data.get("machine", {})
    ax.set_title(f"tapegrad bench {data.get('created', '')}  ·  {m.get('cpu_model') or m.get('machine', '')}"
                 f", {m.get('cpu_count')} CPUs", fontsize=9)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * 1.6)                       # room for the value labels
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    png_path = png_path or os.path.splitext(json_path)[0] + ".png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m bench.plot RESULTS.json [...]")
    for p in sys.argv[1:]:
        print(plot(p))
