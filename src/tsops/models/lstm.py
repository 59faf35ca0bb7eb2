"""The LSTM forecaster: an LSTM over the input window plus context features, predicting the
next H steps as a correction to the seasonal-naive forecast. Inputs are made scale-free per
row (relative to the last observation, divided by one training scale) so one model serves
entities of different levels; the output layer starts at zero, so an untrained network is
exactly seasonal naive and training can only learn what that baseline misses.

This module and `pyfunc.py` travel with every logged model (`models.artifact.log_model`, as MLflow
`code_paths`), so they import nothing of tsops but its errors, and those only when present."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

try:
    from tsops.errors import ModelError
except ModuleNotFoundError:  # the copy carried with a model artefact, loaded without tsops

    class ModelError(ValueError):  # type: ignore[no-redef]
        def __init__(self, message: str, where: str | None = None):
            super().__init__(f"{where}: {message}" if where else message)


def level_adjusted_lags(horizon: int, season: int, seasons: int = 1, steps: int = 1) -> list[str]:
    """The lags of the level-adjusted base (as `tsops.models.baselines.level_adjusted_lags`, kept
    here because this module travels with the model without tsops): K·H profile lags, then the
    K·k recent lags, then the K·k lags j seasons before them."""
    profile = [
        f"lag_{season * -(-h // season) + (j - 1) * season - h}"
        for j in range(1, seasons + 1)
        for h in range(1, horizon + 1)
    ]
    recent = [f"lag_{i}" for j in range(1, seasons + 1) for i in range(steps)]
    before = [f"lag_{i + j * season}" for j in range(1, seasons + 1) for i in range(steps)]
    return [*profile, *recent, *before]


@dataclass(frozen=True)
class ForecasterConfig:
    window_names: list[str]  # lag_0 .. lag_{W-1}
    context_names: list[str]  # extra lags, rolling stats, calendar terms
    horizon: int
    hidden_size: int
    num_layers: int
    dropout: float
    season: int
    scale: float  # input scale: std of (label - last observation) in training
    residual_scale: float  # output scale: std of (label - seasonal naive) in training
    # conformal intervals (models/intervals.py): levels in percent, quantiles per level and step
    interval_levels: list[float] = field(default_factory=list)
    interval_quantiles: list[list[float]] = field(default_factory=list)
    interval_floor: float = 0.0
    # base = seasonal naive + (lag_0 - lag_season): last season's profile moved to today's level
    level_adjusted: bool = False
    # with level_adjusted: the mean of the K = base_seasons last seasons' profiles, each moved by
    # the level difference averaged over the last k = base_steps steps (1, 1: the form above)
    base_seasons: int = 1
    base_steps: int = 1
    # networks trained alike from different seeds; the correction is their mean (model.ensemble)
    members: int = 1
    # the share of the network's correction kept at each forecast step, chosen on the validation
    # origins after training (models.training.correction_weights); empty: all of it
    correction_weights: list[float] = field(default_factory=list)
    # the window the intervals' local scale reads: the features' whole window, which may be
    # longer than the network's input (model.input_window); empty: window_names (older models)
    scale_window: list[str] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [*self.window_names, *self.context_names]

    @property
    def scale_names(self) -> list[str]:
        return self.scale_window or self.window_names


# Rows per forward call. The LSTM's per-step state of a chunk stays in the CPU's cache: on this
# project's 2-core Xeon (hidden 64, window 48, one thread) 256 rows cost 19.6 µs each, 4,096
# rows 38.5 µs (docs/benchmarks.md, "A cheaper forward"); one row per call costs ~30 µs.
FORWARD_ROWS = 256


class LSTMNet(nn.Module):
    def __init__(self, cfg: ForecasterConfig):
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=1,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            batch_first=True,
        )
        out = nn.Linear(cfg.hidden_size, cfg.horizon)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.head = nn.Sequential(
            nn.Linear(cfg.hidden_size + len(cfg.context_names), cfg.hidden_size),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            out,
        )

    def forward(self, seq: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(seq)
        return self.head(torch.cat([h[-1], ctx], dim=1))


class EnsembleNet(nn.Module):
    """`cfg.members` networks of the same shape; the correction is the mean of theirs."""

    def __init__(self, cfg: ForecasterConfig, nets: list[nn.Module] | None = None):
        super().__init__()
        self.members = nn.ModuleList(nets or [LSTMNet(cfg) for _ in range(cfg.members)])

    def forward(self, seq: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(seq, ctx) for member in self.members]).mean(dim=0)


def build_net(cfg: ForecasterConfig) -> nn.Module:
    """An untrained network for `cfg`: one LSTMNet, or an ensemble of `cfg.members`."""
    return LSTMNet(cfg) if cfg.members == 1 else EnsembleNet(cfg)


def _context_kind(name: str) -> str:
    if name.startswith("lag_") or name.startswith("roll_mean_"):
        return "level"
    if name.startswith("roll_std_"):
        return "spread"
    return "raw"


class Forecaster:
    """The network plus the preprocessing that turns feature rows into its tensors and back."""

    def __init__(self, cfg: ForecasterConfig, net: nn.Module | None = None):
        self.cfg = cfg
        self.net = net or build_net(cfg)
        kinds = [_context_kind(n) for n in cfg.context_names]
        self._level = np.array([k == "level" for k in kinds], dtype=bool)
        self._spread = np.array([k == "spread" for k in kinds], dtype=bool)
        if cfg.level_adjusted:  # profiles, then the recent and the season-before level lags
            self._base_names = level_adjusted_lags(cfg.horizon, cfg.season, cfg.base_seasons, cfg.base_steps)
        else:  # the seasonal-naive forecast's lags
            backs = [cfg.season * -(-h // cfg.season) - h for h in range(1, cfg.horizon + 1)]
            self._base_names = [f"lag_{b}" for b in backs]
        self._plans: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def plan(self, columns: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Column indices (window, context, base lags, the intervals' scale window) of a matrix
        with `columns`, computed once per column layout."""
        plan = self._plans.get(columns)
        if plan is None:
            at = {c: i for i, c in enumerate(columns)}
            needed = (*self.cfg.input_names, *self._base_names, *self.cfg.scale_names)
            missing = list(dict.fromkeys(c for c in needed if c not in at))
            if missing:
                raise ModelError(f"input lacks feature column(s) {missing[:5]}", "input")
            plan = self._plans[columns] = (
                np.array([at[c] for c in self.cfg.window_names], dtype=np.intp),
                np.array([at[c] for c in self.cfg.context_names], dtype=np.intp),
                np.array([at[c] for c in self._base_names], dtype=np.intp),
                np.array([at[c] for c in self.cfg.scale_names], dtype=np.intp),
            )
        return plan

    def arrays(
        self, matrix: np.ndarray, columns: tuple[str, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(sequence, context, base forecast) for a finite float64 matrix of feature rows: the
        window runs oldest → newest, scaled around its latest value."""
        window_at, context_at, base_at, _ = self.plan(columns)
        window = matrix[:, window_at]
        context = matrix[:, context_at]  # fancy indexing: a copy, safe to scale in place
        anchor = window[:, 0].copy()
        seq = (window[:, ::-1] - anchor[:, None]) / self.cfg.scale
        context[:, self._level] = (context[:, self._level] - anchor[:, None]) / self.cfg.scale
        context[:, self._spread] = context[:, self._spread] / self.cfg.scale
        return (
            torch.from_numpy(np.ascontiguousarray(seq, dtype=np.float32)).unsqueeze(-1),
            torch.from_numpy(context.astype(np.float32)),
            self._base(matrix, base_at),
        )

    def _base(self, matrix: np.ndarray, base_at: np.ndarray) -> np.ndarray:
        """The forecast the network corrects: the seasonal naive, level-adjusted if so set."""
        if not self.cfg.level_adjusted:
            return matrix[:, base_at]
        n, (H, K, k) = len(matrix), (self.cfg.horizon, self.cfg.base_seasons, self.cfg.base_steps)
        profiles = matrix[:, base_at[: K * H]].reshape(n, K, H)
        pairs = K * k
        recent = matrix[:, base_at[K * H : K * H + pairs]]
        before = matrix[:, base_at[K * H + pairs :]]
        shifts = (recent - before).reshape(n, K, k).mean(axis=2)
        return (profiles + shifts[:, :, None]).mean(axis=1)

    def tensors(self, features: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """`arrays` for a DataFrame of feature rows, after checking they are complete."""
        missing = [c for c in self.cfg.input_names if c not in features.columns]
        if missing:
            raise ModelError(f"input lacks feature column(s) {missing[:5]}", "input")
        columns = tuple(dict.fromkeys([*self.cfg.input_names, *self._base_names, *self.cfg.scale_names]))
        matrix = features[list(columns)].to_numpy(dtype=np.float64)
        inputs = matrix[:, : len(self.cfg.input_names)]
        bad = ~np.isfinite(inputs).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            cols = [c for c in self.cfg.input_names if not np.isfinite(float(features[c].iloc[row]))]
            raise ModelError(f"row {row}: non-finite value(s) in {cols[:5]}", "input")
        return self.arrays(matrix, columns)

    def targets(self, labels: np.ndarray, base: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((labels - base) / self.cfg.residual_scale).astype(np.float32))

    def predict(self, features: pd.DataFrame, batch_size: int = FORWARD_ROWS) -> np.ndarray:
        """Forecasts of shape (rows, horizon) in the target's units."""
        return self._forecast(*self.tensors(features), batch_size)

    def predict_matrix(
        self, matrix: np.ndarray, columns: tuple[str, ...], batch_size: int = FORWARD_ROWS
    ) -> np.ndarray:
        """`predict` for a finite float64 matrix whose columns are `columns` (the hot paths:
        serving and streaming; no DataFrame, no checks beyond the column plan)."""
        return self._forecast(*self.arrays(matrix, columns), batch_size)

    def _forecast(
        self, seq: torch.Tensor, ctx: torch.Tensor, base: np.ndarray, batch_size: int
    ) -> np.ndarray:
        if self.net.training:  # eval() walks every module: ~13 µs a call, on each request
            self.net.eval()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(seq), batch_size):
                outs.append(self.net(seq[i : i + batch_size], ctx[i : i + batch_size]).numpy())
        delta = np.concatenate(outs) if outs else np.zeros((0, self.cfg.horizon), np.float32)
        correction = delta.astype(np.float64) * self.cfg.residual_scale
        if self.cfg.correction_weights:
            correction *= np.asarray(self.cfg.correction_weights)
        return base + correction

    def calibrated(self, features: pd.DataFrame, labels: np.ndarray, levels: list[float]) -> Forecaster:
        """This forecaster with conformal intervals calibrated on `features`/`labels` (rows the
        network was not trained on: the validation origins)."""
        from tsops.models import intervals

        seq, ctx, base = self.tensors(features)
        yhat = self._forecast(seq, ctx, base, FORWARD_ROWS)
        scale = self._scale(features[self.cfg.scale_names].to_numpy(dtype=np.float64))
        floor = max(float(np.median(scale)) * intervals.FLOOR_SHARE, 1e-12)
        scores = np.abs(labels - yhat) / np.maximum(scale, floor)[:, None]
        cfg = replace(
            self.cfg,
            interval_levels=[float(x) for x in levels],
            interval_quantiles=intervals.calibrate(scores, levels),
            interval_floor=floor,
        )
        return Forecaster(cfg, self.net)

    def _scale(self, window: np.ndarray) -> np.ndarray:
        from tsops.models import intervals

        return intervals.local_scale(window, self.cfg.season)

    def interval_bounds(
        self, matrix: np.ndarray, columns: tuple[str, ...], yhat: np.ndarray
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Lower/upper bounds per level ("80", "95") around `yhat` for the feature rows in
        `matrix` (columns `columns`); empty when the model has no calibrated intervals."""
        if not self.cfg.interval_levels:
            return {}
        return self._bounds(matrix[:, self.plan(columns)[3]], yhat)

    def _bounds(self, window: np.ndarray, yhat: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from tsops.models import intervals

        if not self.cfg.interval_levels:
            return {}
        return intervals.bounds(
            yhat,
            self._scale(window),
            self.cfg.interval_levels,
            self.cfg.interval_quantiles,
            self.cfg.interval_floor,
        )

    def interval_bounds_frame(
        self, features: pd.DataFrame, yhat: np.ndarray
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """`interval_bounds` for a DataFrame of feature rows (empty without intervals)."""
        if not self.cfg.interval_levels:
            return {}
        return self._bounds(features[self.cfg.scale_names].to_numpy(np.float64), yhat)

    def predict_intervals(
        self, features: pd.DataFrame
    ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Forecasts and their interval bounds for a DataFrame of feature rows."""
        yhat = self.predict(features)
        return yhat, self._bounds(features[self.cfg.scale_names].to_numpy(np.float64), yhat)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.cfg), indent=1))
        torch.save(self.net.state_dict(), folder / "weights.pt")
        return folder

    @classmethod
    def load(cls, folder: Path) -> Forecaster:
        cfg = ForecasterConfig(**json.loads((folder / "config.json").read_text()))
        net = build_net(cfg)
        net.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
        net.eval()
        return cls(cfg, net)
