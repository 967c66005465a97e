"""SWAG (Maddox et al. 2019): a Gaussian over the weights from the first two
moments of the SGD iterates, and its Bayesian model average.

Collected by SWA (``landscape swa --swag-rank K``): at every averaging, the
running mean w̄ and mean of squares of the iterates (float64), and the
deviation D_i = w_i - w̄_i of the iterate from the running mean just updated
to include it; the last K deviations are kept. ``swag.pt`` holds them and the
float64 mean beside the SWA network (batch norm recomputed), so it also
loads as that network.

The approximate posterior is N(w̄, scale x (Σ_diag + D Dᵀ / (K - 1))),
Σ_diag = diag(mean of squares - w̄²), K the deviations kept: min(``--swag-rank``,
the iterates averaged). (The reference code divides by ``--swag-rank`` - 1
even when fewer were collected; the two agree once K iterates are averaged.
While fewer are, the first deviation kept is w_1 - w_1 = 0, as there.) A sample:

    w = w̄ + sqrt(scale) (Σ_diag^½ z_1 + D z_2 / sqrt(K - 1)),  z_1 ~ N(0, I_P), z_2 ~ N(0, I_K)

``scale`` 0.5 is the paper's ½ (Σ_diag + Σ_low-rank); ``diag=True`` drops the
low-rank term (SWAG-Diagonal, N(w̄, Σ_diag) in the paper: its default scale is
1, as in the reference code's evaluation). The Bayesian model average (BMA) averages the
test-set probabilities of S samples, each with batch norm re-estimated on
the training data. The samples are points of the engine (anchors: the mean
and the samples; coefficients: one-hot rows), so the evaluation is a sweep:
resumable, and shared out under torchrun.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .brief import brief_repr
from .checkpoint import Checkpoint, load_checkpoint, load_model, stored_config
from .data import Dataset
from .device import check_fits, resolve_device
from .errors import UserError, check_nonnegative, check_seed, check_whole
from .evaluate import METRICS, precision_amp
from .inputs import check_data_options, own_network, stored_data
from .metrics import diagram_calibration_error, expected_calibration_error, reliability, running_ensemble
from .sweep import STORE, begin_result, finish_result, process_device, request_key, run_sweep
from .weights import ParamSpace

__all__ = ["SwagMoments", "SwagPosterior", "load_swag", "evaluate_swag", "SwagEvaluation"]


class SwagMoments:
    """What SWA collects for SWAG besides its running mean: the running mean of
    the squared iterates and the last ``rank`` deviations from the running mean."""

    def __init__(self, numel: int, rank: int, device: torch.device | str) -> None:
        self.rank = rank
        self.sq_mean = torch.zeros(numel, dtype=torch.float64, device=device)
        self.deviations = torch.zeros(0, numel, dtype=torch.float32, device=device)

    def add(self, w: torch.Tensor, mean: torch.Tensor, n: int) -> None:
        """Take iterate ``w`` (float64), the ``n``-th averaged, ``mean`` the running mean including it."""
        self.sq_mean += (w * w - self.sq_mean) / n
        self.deviations = torch.cat([self.deviations, (w - mean).float()[None]])[-self.rank:]

    def state(self) -> dict[str, torch.Tensor]:
        return {"sq_mean": self.sq_mean, "deviations": self.deviations}

    def load(self, state: dict[str, Any]) -> None:
        if "sq_mean" in state:
            self.sq_mean = state["sq_mean"].to(device=self.sq_mean.device, dtype=torch.float64)
            self.deviations = state["deviations"].to(device=self.sq_mean.device, dtype=torch.float32)


@brief_repr
@dataclass
class SwagPosterior:
    """SWAG's Gaussian over the flat weights of ``ParamSpace.of(model)``."""

    mean: torch.Tensor  # (P,) float64
    sq_mean: torch.Tensor  # (P,) float64
    deviations: torch.Tensor  # (K, P) float32, the last K deviations
    averaged: int  # iterates that went into the moments

    def variance(self) -> torch.Tensor:
        """Σ_diag, clamped at 0 (the difference of two float64 means can round below 0)."""
        return (self.sq_mean - self.mean * self.mean).clamp(min=0.0)

    def low_rank(self, diag: bool = False) -> bool:
        """Whether draws have the low-rank term: not ``diag`` (SWAG-Diagonal),
        and at least 2 deviations kept (fewer span nothing)."""
        return not diag and self.deviations.shape[0] >= 2

    def sample(self, count: int, seed: int = 0, scale: float | None = None, diag: bool = False) -> torch.Tensor:
        """``count`` draws (count, P), float32, on the mean's device; the normal
        draws come from a CPU generator seeded with ``seed``, so a seed gives
        the same samples on every device. ``scale`` defaults to the paper's
        (:func:`default_scale`)."""
        p, k = self.mean.numel(), self.deviations.shape[0]
        low_rank = self.low_rank(diag)
        scale = default_scale(not low_rank) if scale is None else scale  # no low-rank part: SWAG-Diagonal's
        gen = torch.Generator().manual_seed(check_seed(seed))
        if count < 1:
            return torch.zeros(0, p, dtype=torch.float32, device=self.mean.device)
        std = self.variance().sqrt()
        rows = []
        for _ in range(count):  # one at a time: each draw's z_1 is P numbers
            z1 = torch.randn(p, generator=gen, dtype=torch.float64).to(self.mean.device)
            w = std * z1
            if low_rank:
                z2 = torch.randn(k, generator=gen, dtype=torch.float64).to(self.mean.device)
                w = w + (self.deviations.double().T @ z2) / (k - 1) ** 0.5
            rows.append((self.mean + scale ** 0.5 * w).float())
        return torch.stack(rows)


def load_swag(path: str | Path | Checkpoint, device: torch.device | str = "cpu",
              model: str | None = None) -> tuple[SwagPosterior, nn.Module, Checkpoint]:
    """Read ``swag.pt`` (written by ``landscape swa --swag-rank K``; or take it
    already read): the posterior and the SWA network it is centred on.
    ``model``: the user's ``--model``, which must name the checkpoint's own
    network."""
    ck = path if isinstance(path, Checkpoint) else load_checkpoint(path)
    info = ck.extra.get("swag")
    if not isinstance(info, dict) or not {"mean", "sq_mean", "deviations", "names", "averaged"} <= set(info):
        beside = Path(ck.path).parent / "swag.pt"
        if Path(ck.path).name != "swag.pt" and beside.exists():  # swa.pt given: its run wrote the moments beside it
            raise UserError(f"{ck.path}: holds no SWAG moments; did you mean {beside}?")
        raise UserError(f"{ck.path}: holds no SWAG moments; make them with 'landscape swa --swag-rank K' "
                        f"(it writes swag.pt)")
    net = load_model(ck, own_network(ck, model))
    space = ParamSpace.of(net)
    if list(info["names"]) != list(space.names):
        raise UserError(f"{ck.path}: the SWAG moments' parameter names do not match its network")
    device = resolve_device(device)  # "auto" too
    # the float64 running mean: the network's float32 weights would round w̄² by more than small variances
    mean = info["mean"].to(device=device, dtype=torch.float64)
    post = SwagPosterior(mean=mean, sq_mean=info["sq_mean"].to(device=device, dtype=torch.float64),
                         deviations=info["deviations"].to(device=device, dtype=torch.float32),
                         averaged=int(info["averaged"]))
    if mean.shape != (space.numel,) or post.sq_mean.shape != mean.shape or post.deviations.shape[1:] != mean.shape:
        raise UserError(f"{ck.path}: the SWAG moments do not have the network's {space.numel} parameters")
    for name, t in (("mean", post.mean), ("second moment", post.sq_mean), ("deviations", post.deviations)):
        if not bool(torch.isfinite(t).all()):
            raise UserError(f"{ck.path}: the SWAG {name} has {int((~torch.isfinite(t)).sum())} non-finite values "
                            f"(the SWA run diverged?)")
    if post.averaged < 2:
        raise UserError(f"{ck.path}: SWAG moments of {post.averaged} iterate, a Gaussian of no spread; average at "
                        f"least 2 (more --epochs, or a smaller --cycle)")
    return post, net.to(device), ck


@brief_repr
@dataclass
class SwagEvaluation:
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]  # what swag.npz holds
    out: Path | None


def default_scale(diag: bool) -> float:
    """The paper's covariance scale: 0.5 for SWAG (½ (Σ_diag + Σ_low-rank)),
    1 for SWAG-Diagonal (N(w̄, Σ_diag))."""
    return 1.0 if diag else 0.5


def check_draws(samples: object, seed: object) -> tuple[int, int]:
    """``--samples`` (a whole number, at least 1) and ``--seed`` as ints, or one line."""
    samples = check_whole("--samples", samples)
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    return samples, check_seed(seed)


def check_draws_fit(samples: int, parameters: int, device) -> None:
    """One line where ``samples`` draws of ``parameters`` floats, drawn at once, cannot fit ``device``."""
    check_fits(4.0 * samples * parameters, f"--samples {samples} (the draws, samples x parameters floats)", device)


def evaluate_swag(
    swag: str | Path,
    out: str | Path | None = None,
    *,
    samples: int = 30,
    scale: float | None = None,
    diag: bool = False,
    seed: int = 0,
    data: Dataset | None = None,
    wd: float | None = None,
    batch_size: int = 1000,
    bn_batches: int | None = None,
    bn_stats: str = "auto",
    points_per_pass: int | None = None,
    precision: str = "fp32",
    device: str = "auto",
    resume: bool = False,
    progress: bool = False,
    argv: Sequence[str] | None = None,
    model: str | None = None,
    **data_overrides: Any,
) -> SwagEvaluation:
    """The SWAG Bayesian model average of ``samples`` draws from ``swag.pt``,
    against the SWA mean it is centred on.

    Every draw and the mean are evaluated with batch norm re-estimated (train
    loss, train NLL and error, test NLL and error); the BMA's test error and
    NLL are given after 1, 2, .., S draws. ``wd`` and the data default to
    the SWA run's settings. With ``out``: ``swag.npz``, ``summary.json``,
    ``config.json``, and the sweep's partial store for ``resume``."""
    check_data_options(data_overrides)  # a misspelt keyword lands among them
    amp = precision_amp(precision)
    samples, seed = check_draws(samples, seed)
    if scale is not None:
        check_nonnegative("--scale", scale)
    out_path = Path(out) if out is not None else None
    device = process_device(device)  # under torchrun: joins the process group
    post, net, ck = load_swag(swag, device, model)
    check_draws_fit(samples, post.mean.numel(), device)
    data, wd = stored_data(ck.meta, ck.model, ck.path, data_overrides, device, data, wd)
    rank = post.deviations.shape[0]
    low_rank = post.low_rank(diag)
    # moments with fewer than 2 deviations have no low-rank part: SWAG-Diagonal, and its scale
    scale = default_scale(not low_rank) if scale is None else scale
    options = {"samples": samples, "scale": scale, "diag": diag, "seed": seed, "wd": wd, "batch_size": batch_size,
               "bn_batches": bn_batches, "bn_stats": bn_stats, "precision": precision, "dataset": data.describe()}
    request = request_key([post.mean, post.sq_mean, post.deviations], {"kind": "swag", **options})
    before = stored_config(out_path) if out_path is not None else None
    if (before and before.get("command") == "swag" and before.get("diag") == diag
            and isinstance(before.get("scale"), (int, float)) and before["scale"] != scale):
        # --diag's default scale moved from 0.5 to the paper's 1 (and so did moments of fewer than 2
        # deviations', SWAG-Diagonal too): say which the folder's run used
        raise UserError(f"{out_path} holds a swag run of --scale {before['scale']:g}, not {scale:g}; pass "
                        f"--scale {before['scale']:g} to resume or repeat it, or choose another --out")
    finished = begin_result(out_path, "swag.npz", resume, "swag", request)
    if finished is not None:
        arrays, summary = finished
        return SwagEvaluation(summary=summary, arrays=arrays, out=out_path)

    config = {"command": "swag", "argv": list(argv) if argv is not None else None, "checkpoint": str(ck.path),
              **options, "device": str(device)}
    arrays, summary = average_of_draws(net, post.mean, post.sample(samples, seed, scale, diag), data, out_path,
                                       "swag", config, resume=resume, wd=wd, batch_size=batch_size,
                                       bn_batches=bn_batches, bn_stats=bn_stats, points_per_pass=points_per_pass,
                                       progress=progress, amp=amp, identity=request)
    summary["swa"] = summary.pop("centre")
    summary.update({
        "method": "SWAG-Diagonal" if not low_rank else "SWAG",
        "scale": scale, "diag": diag, "seed": seed, "rank": rank, "averaged": post.averaged, "wd": wd,
        "eval_split": data.eval_split, "synthetic": data.synthetic, "dataset": data.describe(),
        "checkpoint": str(ck.path),
        "notes": "sample = mean + sqrt(scale) (sigma_diag z1 + D z2 / sqrt(K - 1)) (diag: without the D term); "
                 "bma = averaged predicted probabilities of the samples; batch norm re-estimated at every "
                 "sample and at the mean; train_loss = NLL + wd/2 ||w||^2; errors in percent",
    })
    if not diag and rank < 2:
        summary["notes"] += f"; only {rank} deviation(s) collected, so the low-rank term was left out"
    finish_result(out_path, "swag.npz", arrays, summary, request)
    return SwagEvaluation(summary=summary, arrays=arrays, out=out_path)


def average_of_draws(net: nn.Module, centre: torch.Tensor, draws: torch.Tensor, data: Dataset, out: Path | None,
                     kind: str, config: dict[str, Any], *, resume: bool, wd: float, batch_size: int,
                     bn_batches: int | None, bn_stats: str, points_per_pass: int | None, progress: bool,
                     amp: bool, identity: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A posterior's centre and weight draws (S, P) as the anchors of one sweep
    (resumable through ``out``'s partial store, shared out under torchrun):
    the arrays ``sample_<metric>`` (S,), ``mean_<metric>``, ``bma_test_nll`` /
    ``bma_test_error`` (the model average after 1..S draws), ``sample_test_ece``
    (each draw's expected calibration error), ``reliability_centre`` /
    ``reliability_bma`` (3, bins: :func:`~landscape.metrics.reliability`'s
    mean confidence, accuracy and count), and the summary's ``centre``,
    ``bma`` and ``samples`` (the draws' mean metrics), each with its
    ``test_ece``. Used by SWAG and variational inference. ``identity``: the
    request key of the posterior and options the draws were made from, which
    keys the partial store (:func:`~landscape.sweep.run_sweep`)."""
    samples = draws.shape[0]
    anchors = torch.cat([centre.float()[None], draws.float()])  # (1 + S, P)
    res = run_sweep(net, anchors, np.eye(samples + 1), data, store=out / STORE if out is not None else None,
                    resume=resume, settings={"kind": kind, "dataset": data.describe()}, config=config, wd=wd,
                    batch_size=batch_size, bn_batches=bn_batches, bn_stats=bn_stats, points_per_pass=points_per_pass,
                    progress=progress, amp=amp, return_probs=True, what=f"the centre and {samples} samples",
                    identity=identity)
    labels = data.y_test.cpu().numpy()
    arrays: dict[str, np.ndarray] = {f"sample_{m}": res[m][1:] for m in METRICS}
    arrays.update({f"mean_{m}": np.asarray(res[m][0]) for m in METRICS})
    arrays["bma_test_nll"], arrays["bma_test_error"] = running_ensemble(res["probs"][1:], labels)
    arrays["sample_test_ece"] = np.array([expected_calibration_error(p, labels) for p in res["probs"][1:]])
    # reliability diagrams (mean confidence, accuracy, count per bin) of the centre and of the model average
    arrays["reliability_centre"] = np.stack(reliability(res["probs"][0], labels))
    arrays["reliability_bma"] = np.stack(reliability(res["probs"][1:].mean(0), labels))
    summary = {
        "centre": {**{m: float(res[m][0]) for m in METRICS},
                   "test_ece": diagram_calibration_error(arrays["reliability_centre"])},
        "bma": {"test_error": float(arrays["bma_test_error"][-1]), "test_nll": float(arrays["bma_test_nll"][-1]),
                "test_ece": diagram_calibration_error(arrays["reliability_bma"]), "members": samples},
        "samples": {**{f"{m}_mean": float(res[m][1:].mean()) for m in METRICS},
                    "test_ece_mean": float(arrays["sample_test_ece"].mean())},
    }
    return arrays, summary
