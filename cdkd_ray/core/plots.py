"""Matplotlib figures rendered off-screen to PNG bytes (for run outputs, sweeps, load tests, benchmarks)."""

from __future__ import annotations

import io


def subplots(*args, **kwargs):
    """plt.subplots on the non-interactive Agg backend: (figure, axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def to_png(fig, dpi: int = 100) -> bytes:
    """Lay out, render and close the figure; the PNG bytes."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
