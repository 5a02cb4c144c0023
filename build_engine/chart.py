"""A small PNG chart of engine size against KL divergence: the quantization trade-off at a glance."""
from __future__ import annotations

from pathlib import Path

from build_engine.files import partial_path


def size_vs_kl(*, rows: dict[str, dict], out: Path, title: str) -> Path:
    """Plot size (MiB) vs mean KL for each quant level in ``rows``; write ``out`` atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        for quant, r in rows.items():
            size = r["size_bytes"] / 2**20  # MiB
            kl = max(r["kl_mean"], 1e-6)  # the reference has KL 0; keep it on the log axis
            ax.scatter(size, kl, s=30)
            label = f"{quant} (reference)" if r["kl_mean"] == 0 else f"{quant}\ntop-1 {100 * r['top1']:.1f}%"
            ax.annotate(label, (size, kl), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("engine size (MiB)")
        ax.set_ylabel("mean KL divergence vs 16-bit (nats/token)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        tmp = partial_path(out)
        fig.savefig(tmp, format="png")
        tmp.replace(out)
    finally:
        plt.close(fig)
    return out
