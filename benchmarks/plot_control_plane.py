"""Plots benchmark_control_plane.py's JSON: per-path decode step time, engine CPU
time and bytes sent per step against batch size, at one context length.

    python benchmarks/plot_control_plane.py --context 1024
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")  # no display on a server; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (
    ("ms_per_step", "wall time per decode step (ms)"),
    ("engine_cpu_ms_per_step", "engine-process CPU per step (ms)"),
    ("bytes_sent_per_step", "bytes engine -> workers per step"),
)
# Paths that send identical bytes (mp and ray; both SPMD ones) would hide each
# other: distinct markers and dashes keep both visible.
STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input-json", default="benchmarks/results/control_plane.json")
    p.add_argument("--output", default="benchmarks/results/control_plane.png")
    p.add_argument(
        "--context", type=int, default=1024, help="nearest measured one is used"
    )
    return p.parse_args(argv)


def pick_context(rows: list[dict], wanted: int) -> int:
    contexts = sorted({r["context"] for r in rows})
    if not contexts:
        raise SystemExit("the JSON holds no results")
    return min(contexts, key=lambda c: (abs(c - wanted), c))


def series(rows: list[dict], context: int) -> dict[str, list[dict]]:
    """path -> its rows at this context, by batch size, in first-seen path order."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        if row["context"] == context:
            out.setdefault(row["path"], []).append(row)
    return {p: sorted(rs, key=lambda r: r["batch"]) for p, rs in out.items()}


def plot(rows: list[dict], context: int, output: str) -> None:
    lines = series(rows, context)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4.2))
    batches = sorted({r["batch"] for rs in lines.values() for r in rs})
    for ax, (key, title) in zip(axes, PANELS):
        for i, (path, rs) in enumerate(lines.items()):
            points = [(r["batch"], r[key]) for r in rs if r[key] > 0]
            if points:  # uni sends nothing: a log axis cannot show zero
                xs, ys = zip(*points)
                marker, dash = STYLES[i % len(STYLES)]
                ax.plot(
                    xs, ys, color=f"C{i}", marker=marker, linestyle=dash, label=path
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_yscale("log")
        ax.set_xlabel("batch size (decoding sequences)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].text(
        0.02, 0.94, "uni: 0 B (in-process)", transform=axes[2].transAxes, fontsize=8
    )
    fig.suptitle(f"Control-plane cost per decode step, context {context} tokens")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    with open(args.input_json, encoding="utf-8") as f:
        rows = json.load(f)["results"]
    context = pick_context(rows, args.context)
    plot(rows, context, args.output)
    print(f"wrote {args.output} (context {context})")


if __name__ == "__main__":
    main(parse_args())
