"""Training the LSTM forecaster with early stopping on the validation origins."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tsops.errors import ModelError
from tsops.features.definitions import FeatureSet
from tsops.models.baselines import seasonal_naive
from tsops.models.dataset import Examples, TrainingData
from tsops.models.lstm import Forecaster, ForecasterConfig
from tsops.settings import ModelSettings

EpochCallback = Callable[[int, float, float], None]  # epoch, train loss, validation MAE


@dataclass
class TrainResult:
    forecaster: Forecaster
    epochs_run: int
    best_epoch: int
    train_loss: list[float] = field(default_factory=list)
    val_mae: list[float] = field(default_factory=list)


def fit(
    data: TrainingData,
    features: FeatureSet,
    model: ModelSettings,
    *,
    quick: bool = False,
    on_epoch: EpochCallback | None = None,
    show_progress: bool = True,
    init: Forecaster | None = None,
) -> TrainResult:
    torch.manual_seed(model.seed)
    torch.set_num_threads(model.threads)
    rng = np.random.default_rng(model.seed)
    last = data.train.features["lag_0"].to_numpy()
    spread = float(np.std(data.train.labels - last[:, None]))
    base = seasonal_naive(data.train.features, model.horizon, model.main_season)
    residual = float(np.std(data.train.labels - base))
    cfg = ForecasterConfig(
        window_names=features.window_names[: model.input_window],  # the most recent N steps
        context_names=features.context_names,
        horizon=model.horizon,
        hidden_size=model.hidden_size,
        num_layers=model.num_layers,
        dropout=model.dropout,
        season=model.main_season,
        scale=spread if spread > 0 else 1.0,
        residual_scale=residual if residual > 0 else 1.0,
    )
    forecaster = Forecaster(cfg) if init is None else warm_start(init, cfg)
    seq, ctx, base = forecaster.tensors(data.train.features)
    target = forecaster.targets(data.train.labels, base)
    optimizer = torch.optim.Adam(forecaster.net.parameters(), lr=model.learning_rate)
    epochs = model.quick_epochs if quick else model.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = torch.nn.SmoothL1Loss(beta=0.5)
    result = TrainResult(forecaster, 0, 0)
    best_mae, best_state, stale = math.inf, None, 0
    n = len(target)
    with Progress(
        TextColumn("training LSTM"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        disable=not show_progress,
    ) as progress:
        task = progress.add_task("train", total=epochs, info="")
        for epoch in range(1, epochs + 1):
            forecaster.net.train()
            order = torch.from_numpy(rng.permutation(n))
            total = 0.0
            for i in range(0, n, model.batch_size):
                batch = order[i : i + model.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(forecaster.net(seq[batch], ctx[batch]), target[batch])
                if not torch.isfinite(loss):
                    raise ModelError(
                        f"training diverged at epoch {epoch} (loss {loss.item()})",
                        "model.learning_rate",
                    )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(forecaster.net.parameters(), 1.0)
                optimizer.step()
                total += loss.item() * len(batch)
            scheduler.step()
            train_loss = total / n
            val_mae = validation_mae(forecaster, data.val)
            result.train_loss.append(train_loss)
            result.val_mae.append(val_mae)
            result.epochs_run = epoch
            if on_epoch:
                on_epoch(epoch, train_loss, val_mae)
            if val_mae < best_mae - 1e-9:
                best_mae, best_state, stale = val_mae, copy.deepcopy(forecaster.net.state_dict()), 0
                result.best_epoch = epoch
            else:
                stale += 1
            progress.update(task, advance=1, info=f"loss {train_loss:.4f}  val MAE {val_mae:.3f}")
            if stale >= model.patience:
                break
    if best_state is not None:
        forecaster.net.load_state_dict(best_state)
    forecaster.net.eval()
    return result


def warm_start(init: Forecaster, cfg: ForecasterConfig) -> Forecaster:
    """A copy of `init` to fine-tune. Its input and output scales are kept, so its weights keep
    their meaning; the architecture and inputs must match the settings."""
    fields = ("window_names", "context_names", "horizon", "hidden_size", "num_layers", "season")
    changed = [f for f in fields if getattr(init.cfg, f) != getattr(cfg, f)]
    if changed:
        raise ModelError(
            f"cannot warm-start: the champion differs from the settings in {changed}; retrain from scratch",
            "retrain.mode",
        )
    return Forecaster(init.cfg, copy.deepcopy(init.net))


def validation_mae(forecaster: Forecaster, examples: Examples) -> float:
    return float(np.mean(np.abs(forecaster.predict(examples.features) - examples.labels)))
