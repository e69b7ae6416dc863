"""Training curves as PNG files (matplotlib, headless), written atomically."""

import numpy as np

from kzoo.utils.files import atomic_file


def save_curves(panels, path, title=None):
    """Draw one panel per metric group and write the figure as a PNG, atomically.

    Args:
        panels: A list of ``(y_label, curves)``; ``curves`` maps a legend label to ``(epochs,
            values)`` (1-based epoch numbers, which may skip epochs: an evaluation every few
            epochs). Non-finite values are left out of the line. A panel without any curve
            is skipped.
        path: The PNG to write (a temporary beside it, then renamed over it).
        title: Optional figure title.

    Returns ``path``.

    Example:

    ```python
    from kzoo.utils.plots import save_curves
    save_curves([("loss", {"train": ([1, 2, 3], [2.0, 1.5, 1.2])}),
                 ("COCO AP", {"AP50": ([2], [0.4])})], "curves.png")
    ```
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(label, curves) for label, curves in panels if curves]
    if not panels:
        raise ValueError("save_curves needs at least one panel with a curve.")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), dpi=100)
    axes = np.atleast_1d(axes)
    for ax, (y_label, curves) in zip(axes, panels):
        for name, (epochs, values) in curves.items():
            epochs = np.asarray(epochs, np.float64)
            values = np.asarray(values, np.float64)
            keep = np.isfinite(values)
            ax.plot(epochs[keep], values[keep], marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend()
        # Whole epochs on the axis, however few there are.
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path
