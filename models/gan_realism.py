"""How realistic synthetic demand days are, measured against real held-out days.

- Daily shape: the time (half-hour) and level (GW) of each day's peak and trough, compared
  as distributions (means, standard deviations, two-sample Kolmogorov-Smirnov statistic).
- Dependence: lag-1 autocorrelation within days, and lag-48 (same half-hour next day)
  over a run of consecutive days.
- A classifier two-sample test: classifiers trained to tell real from synthetic days,
  scored by cross-validated accuracy on days they did not see (0.5 = indistinguishable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


def day_shape(days: Floats) -> dict[str, Floats]:
    """Per day: peak/trough half-hour index and level."""
    return {
        "peak_time": np.argmax(days, axis=1).astype(np.float64),
        "peak_level": days.max(axis=1),
        "trough_time": np.argmin(days, axis=1).astype(np.float64),
        "trough_level": days.min(axis=1),
    }


def autocorrelation(series: Floats, lag: int) -> float:
    x = np.asarray(series, np.float64) - float(np.mean(series))
    return float(np.dot(x[:-lag], x[lag:]) / np.dot(x, x))


def within_day_lag1(days: Floats) -> float:
    """Lag-1 autocorrelation of each day around its own mean, averaged over days."""
    return float(np.mean([autocorrelation(d, 1) for d in days]))


def compare_shapes(real: Floats, synth: Floats) -> dict[str, dict[str, float]]:
    from scipy.stats import ks_2samp

    r, s = day_shape(real), day_shape(synth)
    out: dict[str, dict[str, float]] = {}
    for key in r:
        ks = ks_2samp(r[key], s[key])
        out[key] = {
            "real_mean": round(float(r[key].mean()), 3),
            "synth_mean": round(float(s[key].mean()), 3),
            "real_std": round(float(r[key].std()), 3),
            "synth_std": round(float(s[key].std()), 3),
            "ks": round(float(ks.statistic), 3),
            "ks_p": round(float(ks.pvalue), 3),
        }
    return out


def two_sample_accuracy(
    real: Floats, synth: Floats, seed: int = 0, repeats: int = 10
) -> dict[str, float]:
    """Mean 5-fold cross-validated accuracy of classifiers telling real from synthetic
    (balanced classes; every score is on days the classifier was not trained on)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(real), len(synth))
    x = np.concatenate([real[:n], synth[:n]])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=repeats, random_state=seed)
    classifiers: dict[str, Any] = {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)),
        "random_forest": RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1),
    }
    return {
        name: round(float(np.mean(cross_val_score(clf, x, y, cv=cv))), 3)
        for name, clf in classifiers.items()
    }


def plot_days(
    path: Path,
    real: Floats,
    synth_samples: Floats,
    labels: list[str],
    real_shape: dict[str, Floats],
    synth_shape: dict[str, Floats],
) -> None:
    """Six held-out days (real vs three synthetic samples each) and peak-time histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7), constrained_layout=True)
    hours = np.arange(real.shape[1]) / 2.0
    for i, ax in enumerate(axes.flat[:6]):
        for j in range(synth_samples.shape[1]):
            ax.plot(
                hours,
                synth_samples[i, j],
                color="tab:orange",
                alpha=0.6,
                lw=1,
                label="synthetic" if j == 0 else None,
            )
        ax.plot(hours, real[i], color="black", lw=2, label="real")
        ax.set_title(labels[i], fontsize=9)
        ax.set_xlabel("hour")
        ax.set_ylabel("demand (GW)")
        if i == 0:
            ax.legend(fontsize=8)
    bins = np.arange(0, 49, 2)
    for ax, key, title in (
        (axes.flat[6], "peak_time", "daily peak"),
        (axes.flat[7], "trough_time", "daily trough"),
    ):
        ax.hist(
            real_shape[key] / 2.0, bins=bins / 2.0, alpha=0.6, density=True, label="real held-out"
        )
        ax.hist(synth_shape[key] / 2.0, bins=bins / 2.0, alpha=0.6, density=True, label="synthetic")
        ax.set_title(f"{title}: hour of day", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(
        "elecdemand: real held-out days (black) vs gan_demand days"
        " for the same temperature and workday"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
