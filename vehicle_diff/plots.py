"""Plots for the reports: training curves, the filter's color confusion, and re-ID CMC curves.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no GUI, no global backend switch, usable
from any thread or a headless node); text uses the DejaVu font matplotlib ships, so nothing is fetched. Each
file is written atomically: a killed stage leaves the old plot or none, never half a PNG.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import pairwise
from pathlib import Path

from .io import atomic_path

MAX_RANK = 50
DPI = 100
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: same data, same bytes


def training_curves(steps, losses, learning_rates, out_file, title: str = "training") -> Path:
    """Loss (raw, and a running mean when there are many points) and learning rate over optimizer steps, in
    two panels sharing the step axis. Non-finite losses (a diverged step) are left out and counted in the
    title rather than refused: the plot is how one sees that it happened."""
    steps = _numbers("steps", steps)
    losses = _numbers("losses", losses, finite=False)
    learning_rates = _numbers("learning_rates", learning_rates)
    if not steps:
        raise ValueError("training_curves: no steps to plot")
    if not len(steps) == len(losses) == len(learning_rates):
        raise ValueError(
            f"training_curves: {len(steps)} steps, {len(losses)} losses and {len(learning_rates)} "
            "learning rates; give one of each per step"
        )
    if any(later < earlier for earlier, later in pairwise(steps)):
        raise ValueError("training_curves: steps must not decrease")
    if any(rate < 0 for rate in learning_rates):
        raise ValueError("training_curves: a learning rate is negative")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5.5), dpi=DPI, layout="constrained")
    loss_axes, rate_axes = figure.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    finite = [(step, loss) for step, loss in zip(steps, losses, strict=True) if math.isfinite(loss)]
    skipped = len(losses) - len(finite)
    if finite:
        x, y = [pair[0] for pair in finite], [pair[1] for pair in finite]
        many = len(finite) > 20
        loss_axes.plot(
            x, y, color="tab:blue", alpha=0.35 if many else 1.0, lw=1, marker=None if many else ".", label="loss"
        )
        if many:
            window = max(5, len(finite) // 20)
            loss_axes.plot(x, _running_mean(y, window), color="tab:blue", lw=2, label=f"running mean of {window}")
        loss_axes.legend(loc="upper right")
    loss_axes.set_ylabel("loss")
    loss_axes.grid(alpha=0.3)
    rate_axes.plot(steps, learning_rates, color="tab:orange", lw=1.5)
    rate_axes.set_ylabel("learning rate")
    rate_axes.set_xlabel("optimizer step")
    rate_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    rate_axes.grid(alpha=0.3)
    note = f" ({skipped} non-finite loss{'es' if skipped != 1 else ''} not drawn)" if skipped else ""
    figure.suptitle(f"{title}{note}")
    return _save(figure, out_file)


def color_confusion(prompt_colors, predicted_colors, colors, out_file, title: str = "color check") -> Path:
    """Counts of (prompted color, CLIP-predicted color) as a heatmap with the count in every cell; rows are
    the prompt's color. An image without a prediction (None: no vehicle detected) is counted in the title,
    not in the matrix."""
    colors = [str(color) for color in colors]
    if not colors or len(set(colors)) != len(colors):
        raise ValueError(f"color_confusion: colors must be distinct and non-empty (got {colors})")
    prompt_colors, predicted_colors = list(prompt_colors), list(predicted_colors)
    if len(prompt_colors) != len(predicted_colors):
        raise ValueError(f"color_confusion: {len(prompt_colors)} prompt colors for {len(predicted_colors)} predictions")
    pairs = [
        (prompt, predicted)
        for prompt, predicted in zip(prompt_colors, predicted_colors, strict=True)
        if predicted is not None
    ]
    named = set(prompt_colors) | {predicted for _, predicted in pairs}
    unknown = sorted(str(color) for color in named - set(colors))
    if unknown:
        raise ValueError(f"color_confusion: {unknown} not in colors {colors}")
    counts = Counter(pairs)
    matrix = [[counts[(row, column)] for column in colors] for row in colors]
    from matplotlib.figure import Figure

    side = 2 + 0.55 * len(colors)
    figure = Figure(figsize=(side + 1.5, side), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues", vmin=0)
    peak = max(max(row) for row in matrix) or 1
    for r, row in enumerate(matrix):
        for c, count in enumerate(row):
            axes.text(
                c, r, str(count), ha="center", va="center", fontsize=9, color="white" if count > peak / 2 else "black"
            )
    axes.set_xticks(range(len(colors)), colors, rotation=45, ha="right")
    axes.set_yticks(range(len(colors)), colors)
    axes.set_xlabel("predicted color (CLIP)")
    axes.set_ylabel("prompt color")
    figure.colorbar(image, ax=axes, shrink=0.8, label="images")
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(colors)))
    summary = f"{correct}/{total} agree ({correct / total:.1%})" if total else "no predictions"
    missing = len(prompt_colors) - len(pairs)
    axes.set_title(f"{title}: {summary}" + (f"; {missing} without a prediction" if missing else ""))
    return _save(figure, out_file)


def cmc_curves(curves: dict[str, list[float]], out_file, title: str = "CMC") -> Path:
    """One CMC curve per variant (plain, re-ranked, per data mode ...) over ranks 1-50; each is the matching
    rate at rank 1, 2, ... (a fraction in [0, 1], never decreasing) and is cut at rank 50. The legend gives
    rank-1 of each."""
    if not curves:
        raise ValueError("cmc_curves: no curves")
    checked = {}
    for name, curve in curves.items():
        values = _numbers(f"cmc_curves[{name!r}]", curve)[:MAX_RANK]
        if not values:
            raise ValueError(f"cmc_curves[{name!r}]: empty")
        if any(not 0 <= v <= 1 for v in values):
            raise ValueError(f"cmc_curves[{name!r}]: values must be fractions in [0, 1] (not percentages)")
        if any(later < earlier - 1e-9 for earlier, later in pairwise(values)):
            raise ValueError(f"cmc_curves[{name!r}]: a CMC curve never decreases; is it a curve of ranks 1, 2, ...?")
        checked[str(name)] = values
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    for name, values in checked.items():
        ranks = range(1, len(values) + 1)
        axes.plot(
            ranks,
            values,
            marker="o" if len(values) <= 10 else None,
            ms=3,
            lw=1.8,
            label=f"{name} (rank-1 {values[0]:.1%})",
        )
    lowest = min(min(values) for values in checked.values())
    axes.set_ylim(max(0.0, lowest - 0.05), 1.01)  # a curve at 100% stays visible
    longest = max(len(values) for values in checked.values())
    axes.set_xlim(1, max(longest, 2))
    axes.set_xticks(
        [rank for rank in (1, 5, 10, 20, 30, 40, 50) if rank <= longest] if longest >= 10 else range(1, longest + 1)
    )
    axes.set_xlabel("rank")
    axes.set_ylabel("matching rate")
    axes.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title(title)
    return _save(figure, out_file)


def _numbers(name: str, values, finite: bool = True) -> list[float]:
    if values is None or isinstance(values, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of numbers, got {values!r}")
    numbers = []
    for position, value in enumerate(values):
        if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
            raise ValueError(f"{name}[{position}]: {value!r} is not a number")
        number = float(value)
        if finite and not math.isfinite(number):
            raise ValueError(f"{name}[{position}]: {number} is not finite")
        numbers.append(number)
    return numbers


def _running_mean(values, window: int) -> list[float]:
    """Trailing mean over up to `window` points (shorter at the start), so the line starts at the first step."""
    means, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        means.append(total / min(index + 1, window))
    return means


def _save(figure, out_file) -> Path:
    out_file = Path(out_file)
    with atomic_path(out_file) as tmp:
        figure.savefig(tmp, format="png", metadata=PNG_METADATA)
    return out_file
