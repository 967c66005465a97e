"""Ensembles of checkpoints: each member, the averaged prediction, and the
weight average with batch norm re-estimated (the SWA view of the same set),
and how closely the weight average's predictions follow the ensemble's (the
SWA papers' claim that averaging weights approximates ensembling
predictions)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .brief import brief_repr
from .averaging import nll_of, predict_log_probs
from .bn import bn_modules
from .checkpoint import claim_folder, load_model, read_json, stored_config, write_json
from .data import Dataset
from .errors import UserError
from .evaluate import evaluate_points
from .inputs import check_data_options, joined_data_options, load_points, note_same_weights
from .metrics import PROB_FLOOR, ensemble_metrics, expected_calibration_error
from .sweep import request_key

__all__ = ["EnsembleResult", "agreement", "evaluate_ensemble"]


@brief_repr
@dataclass
class EnsembleResult:
    summary: dict[str, Any]
    out: Path | None


def agreement(ensemble: np.ndarray, single: np.ndarray) -> dict[str, float]:
    """How closely one network's predicted probabilities ``single`` (M,
    classes) follow an ensemble's averaged ones ``ensemble`` (M, classes):
    the share of examples (in percent) where their top classes agree, and
    the mean KL(ensemble || single) in nats."""
    p, q = np.asarray(ensemble, dtype=np.float64), np.asarray(single, dtype=np.float64)
    kl = (p * (np.log(np.clip(p, PROB_FLOOR, None)) - np.log(np.clip(q, PROB_FLOOR, None)))).sum(axis=1)
    return {"same_prediction": float(100.0 * (p.argmax(1) == q.argmax(1)).mean()), "kl": float(kl.mean())}


def evaluate_ensemble(paths: Sequence[str | Path], out: str | Path | None = None, *, model: str | None = None,
                      model_kwargs: dict | None = None, data_overrides: dict | None = None,
                      device: str = "auto", batch_size: int = 1000, data: Dataset | None = None,
                      resume: bool = False, **data_options: Any) -> EnsembleResult:
    """Test error and NLL of every member (with its own batch-norm statistics),
    of their averaged predicted probabilities, and of their weight average
    (batch norm re-estimated on the training data). ``data``: the
    :class:`~landscape.data.Dataset` the networks were trained on with
    ``data=`` (:func:`~landscape.inputs.load_points`). ``resume``: a folder
    holding the result of the same members (their tensors, batch-norm
    statistics included, and networks) on the same data returns it as stored;
    of others, it is refused. With batch norm, the members and their ensemble
    are also given with statistics re-estimated as the weight average's are
    (``bn_reestimated``, in the same passes). Data options may be given as
    keywords too (``dataset="digits"``)."""
    check_data_options(data_options)
    data_overrides = joined_data_options(data_overrides, data_options)
    out = Path(out) if out is not None else None
    claim_folder(out, "ensemble")  # before the work: a bad --out loses nothing
    finished = out is not None and (out / "summary.json").exists()
    if finished and not resume:
        raise UserError(f"{out} already holds an ensemble result (summary.json); choose another --out (--resume "
                        f"shows it)")
    pts = load_points(paths, model=model, model_kwargs=model_kwargs, data_overrides=data_overrides, device=device,
                      data=data)
    data, labels = pts.data, pts.data.y_test.cpu().numpy()
    # every member's tensors, batch-norm statistics included (its own statistics give its rows), and its network
    held = [torch.cat([t.detach().flatten().float().cpu() for t in ck.state_dict.values() if t.is_floating_point()])
            for ck in pts.checkpoints]
    request = request_key(held, {"kind": "ensemble", "dataset": data.describe(),
                                 "models": [ck.model if ck.model is not None else model for ck in pts.checkpoints],
                                 "model_kwargs": model_kwargs or {}})
    if finished:
        stored = read_json(out / "summary.json")
        same = isinstance(stored, dict) and stored.get("request") == str(request)
        if isinstance(stored, dict) and "request" not in stored:  # an earlier build's: the same files, the same data
            config = stored_config(out) or {}
            same = config.get("checkpoints") == [str(p) for p in paths] and stored.get("dataset") == data.describe()
        if not same:
            raise UserError(f"{out} holds an ensemble result of other members or other data; choose another --out")
        return EnsembleResult(summary=stored, out=out)
    note_same_weights(pts.vectors, paths, "that network counts twice in the ensemble")
    posteriors = [str(p) for p, ck in zip(paths, pts.checkpoints) if ck.kind == "variational"]
    if posteriors:  # as connect says it: the member is one network, not the posterior's average
        print(f"note: {', '.join(posteriors)} hold{'s' if len(posteriors) == 1 else ''} a variational posterior; "
              f"the ensemble takes the network of its means (its model average: landscape vi-eval)",
              file=sys.stderr)
    members, probs = [], []
    for path, label, ck in zip(paths, pts.labels, pts.checkpoints):
        net = (load_model(ck) if ck.model is not None and model is None else
               load_model(ck, model, num_classes=data.num_classes, input_shape=tuple(data.input_shape),
                          **(model_kwargs or {}))).to(data.device)
        log_p = predict_log_probs(net, data, batch_size=batch_size)
        p = log_p.exp().cpu().numpy()
        probs.append(p)
        m = ensemble_metrics(p[None], labels)
        nll = nll_of(log_p, data.y_test)  # its own NLL (an average of probabilities floors at 708 nats an image)
        members.append({"label": label, "path": str(path), "test_error": m["error"], "test_nll": nll,
                        "test_ece": m["ece"]})
    probs = np.stack(probs)  # (members, test images, classes)
    ens = ensemble_metrics(probs, labels)
    n = len(paths)
    has_bn = bool(bn_modules(pts.model))
    # With batch norm, the members too with their statistics re-estimated as the weight average's are (in the
    # same passes): their own running statistics may lag far behind a short run's weights, and the comparison
    # of the weight average with the ensemble would then be of two estimators, not of two models.
    rows = np.vstack([np.eye(n), np.full((1, n), 1.0 / n)]) if has_bn else np.full((1, n), 1.0 / n)
    swept = evaluate_points(pts.model, torch.stack(pts.vectors), rows, data, wd=pts.wd, batch_size=batch_size,
                            return_probs=True)
    avg = {k: v[-1:] for k, v in swept.items()}
    reestimated = None
    if has_bn:
        ens_bn = ensemble_metrics(swept["probs"][:n], labels)
        reestimated = {"members": [{"label": m["label"], "test_error": float(swept["test_error"][i]),
                                    "test_nll": float(swept["test_nll"][i]),
                                    "test_ece": expected_calibration_error(swept["probs"][i], labels)}
                                   for i, m in enumerate(members)],
                       "ensemble": {"test_error": ens_bn["error"], "test_nll": ens_bn["nll"], "test_ece": ens_bn["ece"]},
                       "agreement": agreement(swept["probs"][:n].mean(0), avg["probs"][0])}
    errors = [m["test_error"] for m in members]
    summary = {
        "members": members,
        "member_test_error_mean": float(np.mean(errors)),
        "member_test_error_best": float(np.min(errors)),
        "ensemble": {"test_error": ens["error"], "test_nll": ens["nll"], "test_ece": ens["ece"], "members": n},
        "weight_average": {**{k: float(avg[k][0]) for k in ("train_loss", "train_error", "test_nll", "test_error")},
                           "test_ece": expected_calibration_error(avg["probs"][0], labels)},
        "agreement": agreement(probs.mean(0), avg["probs"][0]),
        "batch_norm": has_bn,  # whether the weight average's statistics were re-estimated
        **({"bn_reestimated": reestimated} if reestimated is not None else {}),  # members and ensemble, likewise
        "eval_split": data.eval_split,
        "synthetic": data.synthetic,
        "dataset": data.describe(),
        "request": str(request),  # the members' tensors and networks, and the data: what --resume answers
        "notes": "members use their own batch-norm statistics; the ensemble averages predicted probabilities; "
                 "the weight average re-estimates batch norm on the training data (bn_reestimated: the members and "
                 "their ensemble with it re-estimated likewise); agreement: the share of test "
                 "images (%) on which the weight average predicts the ensemble's class, and the mean KL from the "
                 "ensemble's predicted distribution to the weight average's",
    }
    if out is not None:
        write_json(out / "summary.json", summary)
        write_json(out / "config.json", {"command": "ensemble", "checkpoints": [str(p) for p in paths],
                                         "dataset": data.describe()})
    return EnsembleResult(summary=summary, out=out)
