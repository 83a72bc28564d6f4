"""Training recipe of ``price_gru`` v2: the recurrent volatility model of ``forecast_vol``.

Data and split are the card's: daily adjusted log returns of AAPL, GOOG, IBM, MSFT, each
ticker its own sequence, chronological 70/15/15. Training pools windows of every ticker's
training rows (a warm-up part that only advances the state, then scored days), loss is the
Gaussian NLL of the next return with a zero mean. Evaluation runs each ticker's whole
history from a zero state, as the worker serves it, and scores test days against GARCH,
GJR-GARCH and EGARCH fitted per ticker on the training rows (``models.baselines``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from statecast.contract.paths import PACKAGE_ROOT
from statecast.models import baselines as bl
from statecast.models.datasets import PRICE_FEATURES, STOCK_TICKERS
from statecast.models.evaluate import gaussian_nll_np, scored_rows, var_backtest
from statecast.models.forecast import gaussian_nll
from statecast.models.forecast_train import (
    Item,
    ItemDataset,
    PriceData,
    prepare_price,
    train_windows,
)
from statecast.models.forecast_vol import VolatilityForecaster, VolConfig
from statecast.models.trainer import TrainConfig, count_parameters, fit, save_checkpoint

log = logging.getLogger(__name__)

NAME = "price_gru"
CHECKPOINT_DIR = PACKAGE_ROOT / "models" / "checkpoints"
F64 = npt.NDArray[np.float64]


def vol_loss(model: nn.Module, batch: Any) -> Tensor:
    """Masked Gaussian NLL of the next return, in units of the pooled return std."""
    x, y, mask = batch
    fc = cast(VolatilityForecaster, model)
    pred, _ = fc(x)
    scale = fc.config.return_std
    nll = gaussian_nll(pred[..., :1] / scale, pred[..., 1:] - 2.0 * np.log(scale), y / scale)
    loss: Tensor = (nll[..., 0] * mask).sum() / mask.sum().clamp(min=1.0)
    return loss


def run_vol(model: VolatilityForecaster, returns: npt.ArrayLike) -> F64:
    model.eval()
    with torch.no_grad():
        y, _ = model(torch.as_tensor(np.asarray(returns, np.float32)).reshape(1, -1, 1))
    out: F64 = y[0].double().numpy()
    return out


def evaluate_price_vol(model: VolatilityForecaster, data: PriceData) -> dict[str, Any]:
    """Test NLL, 95% coverage and 99% VaR backtest of the model and every GARCH baseline."""
    garch = bl.price_baselines(data.returns, data.splits)
    per: dict[str, dict[str, Any]] = {}
    pooled: dict[str, list[F64]] = {"model": [], **{k: [] for k in garch}}
    model_pred: dict[str, tuple[F64, F64]] = {}
    for t, r in data.returns.items():
        rows = scored_rows(data.splits[t])
        target = r[rows + 1]
        pred = run_vol(model, r)
        lv = pred[rows, 1]
        nll = gaussian_nll_np(0.0, lv, target)
        pooled["model"].append(nll)
        per[t] = {"test_nll": round(float(nll.mean()), 6)}
        model_pred[t] = (lv, target)
        for name, fc in garch.items():
            b = gaussian_nll_np(0.0, fc[t].log_var[rows], target)
            pooled[name].append(b)
            per[t][f"{name}_nll"] = round(float(b.mean()), 6)
    means = {k: float(np.concatenate(v).mean()) for k, v in pooled.items()}
    best = min(garch, key=lambda k: means[k])
    gjr = "gjr-garch"
    wins = sum(per[t]["test_nll"] < per[t][f"{gjr}_nll"] for t in per)
    lv_all = np.concatenate([model_pred[t][0] for t in per])
    y_all = np.concatenate([model_pred[t][1] for t in per])
    gjr_lv = np.concatenate(
        [garch[gjr][t].log_var[scored_rows(data.splits[t])] for t in data.returns]
    )
    for t, (lv, target) in model_pred.items():
        per[t].update(var_backtest(0.0 * lv, lv, target).to_dict())
    return {
        "test_nll": round(means["model"], 6),
        # The bar is GJR-GARCH; the best GARCH-family model is reported beside it.
        "baseline": gjr,
        "baseline_nll": round(means[gjr], 6),
        # NLLs are negative here: a ratio above 1 means the model's NLL is lower (better).
        "ratio": round(means["model"] / means[gjr], 4),
        "nll_gap": round(means["model"] - means[gjr], 6),
        "best_garch": best,
        "best_garch_nll": round(means[best], 6),
        "garch_nll": {k: round(means[k], 6) for k in garch},
        "tickers_beating_gjr": int(wins),
        "test_points": int(y_all.size),
        "mean": "zero (the mean has no skill on these returns)",
        # The evidence: test MSE of a zero mean vs the training-split average per ticker.
        "mean_skill": {
            t: {k: float(f"{v:.4g}") for k, v in bl.mean_skill(r, data.splits[t]).items()}
            for t, r in data.returns.items()
        },
        "model_backtest": var_backtest(0.0 * lv_all, lv_all, y_all).to_dict(),
        "gjr_backtest": var_backtest(0.0 * gjr_lv, gjr_lv, y_all).to_dict(),
        "per_series": per,
    }


def train_price_vol(
    *,
    epochs: int = 60,
    seed: int = 0,
    hidden: int = 16,
    lr: float = 5e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    burn_in: int = 250,
    window: int = 250,
    stride: int = 25,
    patience: int = 8,
    max_seconds: float | None = None,
    threads: int = 1,
    progress: bool = True,
    tickers: tuple[str, ...] = STOCK_TICKERS,
    out: Path | None = None,
) -> Path:
    """Train, evaluate on the test split, save ``models/checkpoints/price_gru.pt``."""
    torch.set_num_threads(threads)
    started = time.monotonic()
    data = prepare_price(tuple(tickers))
    train = np.concatenate([r[data.splits[t].train] for t, r in data.returns.items()])
    config = VolConfig(
        prior_var=float(np.mean(train**2)), return_std=float(train.std()), hidden=hidden
    )
    torch.manual_seed(seed)
    model = VolatilityForecaster(config)
    items: list[Item] = []
    for t, r in data.returns.items():
        items += train_windows(r, r, data.splits[t].train_end, burn_in, window, stride)
    val: list[Item] = []
    for t, r in data.returns.items():
        s = data.splits[t]
        rows = np.arange(s.val_end - 1)
        mask = (rows + 1 >= s.train_end).astype(np.float32)
        val.append(
            (
                torch.as_tensor(r[rows, None], dtype=torch.float32),
                torch.as_tensor(r[rows + 1, None], dtype=torch.float32),
                torch.as_tensor(mask),
            )
        )
    tc = TrainConfig(
        epochs=epochs,
        seed=seed,
        max_seconds=max_seconds,
        progress=progress,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        patience=patience,
    )
    result = fit(model, vol_loss, ItemDataset(items), ItemDataset(val), tc)
    metrics = evaluate_price_vol(model, data)
    log.info(
        "%s: test NLL %.4f vs GJR-GARCH %.4f (best GARCH-family %s %.4f); %d/4 tickers",
        NAME,
        metrics["test_nll"],
        metrics["baseline_nll"],
        metrics["best_garch"],
        metrics["best_garch_nll"],
        metrics["tickers_beating_gjr"],
    )
    with torch.no_grad():
        alpha, gamma, beta = (float(v) for v in model.gjr_params())
        decays = [round(float(v), 5) for v in torch.sigmoid(model.decay_logit)]
        blend = [round(float(v), 4) for v in model.blend.weight[0]]
    meta = {
        "name": NAME,
        "features": list(PRICE_FEATURES),
        "normalisation": {"mean": [0.0], "std": [config.return_std]},
        "data": {
            "source": "bokeh_sampledata stocks (adjusted daily closes)",
            "tickers": list(data.returns),
            "rows": {t: s.n for t, s in data.splits.items()},
            "train_end": {t: s.train_end for t, s in data.splits.items()},
            "val_end": {t: s.val_end for t, s in data.splits.items()},
        },
        "metrics": metrics,
        "learned": {
            "decays": decays,
            "gjr": {"alpha": alpha, "gamma": gamma, "beta": beta},
            "blend": blend,
        },
        "train": {
            "seed": seed,
            "lr": lr,
            "batch_size": batch_size,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_val_loss": round(result.best_val_loss, 6),
            "seconds": round(result.seconds, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            "parameters": count_parameters(model),
            "train_windows": len(items),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    return save_checkpoint(out or CHECKPOINT_DIR / f"{NAME}.pt", model, config, meta)
