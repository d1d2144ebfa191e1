"""Figures a person would rather look at than read: PNG files, drawn with matplotlib (Agg).

- a trial's train and dev loss against steps (log scale);
- a study's optimization history, hyperparameter importances and parallel coordinates
  (Optuna's own matplotlib visualizations);
- the final model's character embeddings in 2-D (PCA beyond 2 dimensions), each point
  labelled by its character, as in the lecture;
- the learning-rate finder's loss against the learning-rate exponent;
- Pareto mode: dev loss against parameters (or train seconds), log x, the front drawn, the
  lectures' models as reference points.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402

from harness.search import pareto  # noqa: E402
from harness.search.records import TrialRecord  # noqa: E402

log = logging.getLogger(__name__)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curves(dev: Sequence[tuple[int, float]], train: Sequence[tuple[int, float]],
                title: str, path: Path) -> Path:
    """Train and dev loss against optimizer steps, log-scaled loss axis."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train (mean minibatch loss)", color="#999999")
    if dev:
        ax.plot(*zip(*dev, strict=True), label="dev", color="#1f77b4", linewidth=2)
        step, best = min(dev, key=lambda p: p[1])
        ax.scatter([step], [best], color="#d62728", zorder=3, label=f"best dev {best:.4f}")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.2f"))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if dev or train:
        ax.legend()
    else:  # failed before its first evaluation
        ax.text(0.5, 0.5, "no evaluation", transform=ax.transAxes, ha="center")
    return _save(fig, path)


def study_figures(study: Any, out_dir: Path) -> list[Path]:
    """Optuna's optimization history, importances and parallel coordinates, as PNG files."""
    import optuna.visualization.matplotlib as ovm  # a second to import: only when drawing
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    made: list[Path] = []
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return made  # nothing to draw yet
    # A Pareto study has two objectives; these figures show the first, dev loss.
    target: dict[str, Any] = ({"target": lambda t: t.values[0], "target_name": "dev loss"}
                              if len(study.directions) > 1 else {})
    for name, draw in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances),
                       ("parallel_coordinate", ovm.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():  # Optuna's "experimental" and layout warnings
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = draw(study, **target)
            fig: Any = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5)
            made.append(_save(fig, out_dir / f"{name}.png"))
        except Exception as exc:  # e.g. importances need 2+ complete trials
            log.info("no %s plot: %s", name, exc)
            plt.close("all")
    return made


@torch.no_grad()
def embeddings(weight: torch.Tensor, itos: Sequence[str], path: Path) -> Path:
    """Each character's embedding as a labelled point: the 2 dimensions, or the first 2 PCs."""
    E = weight.detach().float().cpu()
    if E.shape[1] > 2:
        centered = E - E.mean(0)
        _, _, V = torch.linalg.svd(centered, full_matrices=False)
        E, axes = centered @ V[:2].T, ("principal component 1", "principal component 2")
    else:
        axes = ("dimension 1", "dimension 2")
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(E[:, 0], E[:, 1], s=220, color="#cfe2f3", edgecolors="#1f77b4")
    for i, ch in enumerate(itos):
        ax.text(float(E[i, 0]), float(E[i, 1]), ch, ha="center", va="center", fontsize=11)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title("character embeddings")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def lr_finder(exponents: Sequence[float], losses: Sequence[float], suggested: tuple[float, float],
              path: Path) -> Path:
    """Loss against log10(learning rate) over the sweep, with the suggested range shaded."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(exponents, losses, color="#1f77b4")
    ax.axvspan(math.log10(suggested[0]), math.log10(suggested[1]), color="#2ca02c", alpha=0.15,
               label=f"suggested lr {suggested[0]:.3g} .. {suggested[1]:.3g}")
    ax.set_xlabel("log10(learning rate)")
    ax.set_ylabel("mean minibatch loss")
    ax.set_title("learning-rate finder")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def pareto_front(recs: Sequence[TrialRecord], metric: str, path: Path) -> Path:
    """Dev loss against `metric` (log x) for every complete trial (a cross: outside a
    constraint), the front as a staircase, and with n_params the lectures' models as stars."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles: tuple[tuple[bool, dict[str, Any]], ...] = (
        (True, {"color": "#9ecae1", "marker": "o", "label": "trial"}),
        (False, {"color": "#999999", "marker": "x", "label": "trial outside a constraint"}))
    for feasible, style in styles:
        xy = [(c, r.value) for r in recs if r.state.name == "COMPLETE" and r.value is not None
              and r.feasible is feasible and (c := pareto.cost(r, metric)) is not None]
        if xy:
            xs, ys = zip(*xy, strict=True)
            ax.scatter(xs, ys, s=18, zorder=2, **style)
    front = [(pareto.cost(r, metric), r.value) for r in pareto.front(recs, metric)]
    if front:
        xs, ys = zip(*front, strict=True)
        ax.step(xs, ys, where="post", color="#d62728", linewidth=1.5, zorder=3)
        ax.scatter(xs, ys, color="#d62728", s=30, zorder=4,
                   label=f"Pareto front ({len(front)} trials)")
    for name, x, y in pareto.LECTURE_MODELS if metric == "n_params" else ():
        ax.scatter([x], [y], marker="*", s=160, color="#2ca02c", edgecolor="black", zorder=5)
        ax.annotate(f"{name}\n{x:,.0f}: {y:.4f}", (x, y), textcoords="offset points",
                    xytext=(8, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(pareto.UNITS[metric])
    ax.set_ylabel("best dev loss (nats per character)")
    ax.set_title(f"{'model size' if metric == 'n_params' else 'training time'} against dev "
                 "loss: the Pareto front")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
