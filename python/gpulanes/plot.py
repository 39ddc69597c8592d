"""Pictures of plans and runs (matplotlib, imported only when called)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

__all__ = ["plan", "attainment_over_time"]


def plan(p: Mapping[str, Any], ax=None, sms_per_gpu: int = 132):
    """Draws a plan (``Simulator.plan``): one row per GPU, its lanes side by side by SM count,
    each labelled with its models and batch caps. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.7 * max(1, p["gpus_used"])),
                               layout="constrained")
    colors = {}
    start = {}
    for lane in p["lanes"]:
        g = lane["gpu"]
        x = start.get(g, 0)
        names = [m["model"] for m in lane["models"]]
        color = colors.setdefault(names[0], f"C{len(colors) % 10}")
        ax.barh(g, lane["sms"], left=x, color=color, edgecolor="black", alpha=0.8)
        label = "\n".join(f"{m['model']} b{m['batch']}" for m in lane["models"])
        ax.text(x + lane["sms"] / 2, g, label, ha="center", va="center", fontsize=7)
        start[g] = x + lane["sms"]
    ax.set_xlim(0, sms_per_gpu)
    ax.set_yticks(range(p["gpus_used"]), [f"GPU {g}" for g in range(p["gpus_used"])])
    ax.invert_yaxis()
    ax.set_xlabel("SMs")
    title = f"{p['variant']}: {p['gpus_used']} GPU(s), {len(p['lanes'])} lanes"
    if not p["feasible"]:
        title += f" (unplaced: {', '.join(p['unplaced_rate'])})"
    ax.set_title(title)
    return ax


def attainment_over_time(frame, window_s: float = 1.0, ax=None, label: Optional[str] = None):
    """SLO attainment per time window from a ``trace_frame()`` (requests by arrival time)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    bins = (frame["arrival_s"] // window_s) * window_s
    met = (frame["outcome"] == "met").groupby(bins).mean() * 100
    ax.plot(met.index, met.values, label=label)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("SLO attainment (%)")
    if label:
        ax.legend()
    return ax
