"""SPRO and ESPRO (Benton et al. 2021): growing simplexes of low loss.

Simplicial Pointwise Random Optimization adds vertices one at a time, the
earlier ones frozen. Each new vertex starts, by default (``init="centre"``),
at the frozen vertices' centroid (where the reference code starts it) moved
by ``init_scale`` of its norm along a random direction, so that the volume
does not start at zero, or (``init="random"``) at a fresh random
initialisation of the network, and is trained on

    mean_s NLL(phi(b_s))  -  lambda_j * log V,     b_s ~ uniform on a simplex,

a simplex of the complex chosen uniformly for each sample (the paper's
uniform distribution over the whole complex chooses it in proportion to
its volume: ``volume_weighted``),

with weight decay on the vertex (the optimiser's), V the total volume of the
complex's simplexes (Cayley-Menger) and lambda_j = lambda / max(|log V_0|, 1),
V_0 the volume when the new vertex is at its start: a scaling that makes one
``lambda`` fit complexes of any size; the floor of 1 keeps a starting volume
near 1 from making the weight unbounded. (The reference code divides by the
log volume of a freshly initialised simplex, sums, not averages, its
samples' losses, and takes log(V^2 + 1e-4), about twice log V, so its lambda
values do not carry over.)

- Around one mode: the simplex {mode, v_1, .., v_k} (``grow_simplex``).
- Joining modes: connectors c_1..c_m shared by the simplexes {mode_i, c_1..c_m}
  (``connect_modes``).
- ESPRO: several modes each grown into a simplex; the ensemble averages the
  predictions of samples across the components (``espro``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from landscape.brief import brief_repr
from landscape.checkpoint import (
    Checkpoint,
    claim_folder,
    load_checkpoint,
    load_model,
    read_json,
    remove_file,
    require_network,
    save_checkpoint,
    stored_config,
    write_json,
    write_npz,
)
from landscape.data import Dataset, refuse_data_twice, refuse_given_data_path
from landscape.device import check_fits, resolve_device
from landscape.errors import UserError, check_keywords, check_nonnegative, check_seed, check_whole
from landscape.evaluate import METRICS, forward_points
from landscape.geometry import line_coefficients
from landscape.inputs import (DATA_FIELDS, check_same_data, data_settings,
                              load_points, named_model, network_of, note_same_weights, own_network,
                              refuse_same_weights, refuse_single_path, require_architecture, run_data)
from landscape.metrics import barrier, ensemble_metrics
from landscape.models import from_spec, model_spec
from landscape.sweep import barrier as wait_for_ranks, is_main, process_device, rank_and_world, run_sweep
from landscape.train import Task, TrainConfig, check_world, derived_seed, prepare_run, run_training
from landscape.weights import ParamSpace

from .base import frozen_pin
from .simplex import SimplicialComplex, face_grid

__all__ = ["SimplexConfig", "SimplexResult", "grow_simplex", "connect_modes", "espro", "evaluate_simplex",
           "load_simplex", "save_simplex"]


@dataclass
class SimplexConfig(TrainConfig):
    """Settings of ``landscape simplex``; ``epochs`` is per added vertex."""

    # The network is the modes' (the folder's claim checks them), and earlier builds recorded
    # the default here: a resumed vertex does not compare it. (A class attribute, not a setting.)
    resume_free = ("model", "model_kwargs")

    lam: float = 0.1
    samples: int = 5
    volume_weighted: bool = False
    init: str = "centre"
    init_scale: float = 0.05
    epochs: int = 10
    lr: float = 0.01

    def validate(self) -> None:
        super().validate()
        check_nonnegative("--lam", self.lam)  # NaN fails too: it would train, then report a NaN volume
        self.samples = check_whole("--samples", self.samples)
        if self.samples < 1:
            raise UserError(f"--samples must be at least 1, got {self.samples}")
        if self.init not in ("random", "centre"):
            raise UserError(f"unknown --init {self.init!r}; choose random or centre")
        if self.init == "centre" and not 0 < self.init_scale < float("inf"):
            raise UserError(f"--init-scale must be positive (a new vertex at the centroid spans no volume), "
                            f"got {self.init_scale}")


@brief_repr
@dataclass
class SimplexResult:
    complex: SimplicialComplex
    model: nn.Module
    summary: dict[str, Any]
    out: Path | None
    data: Dataset | None = None
    sample_probs: np.ndarray | None = None  # (samples, M, classes): the evaluated samples' test predictions


# ---------------------------------------------------------------------------- files
def save_simplex(path: Path, cx: SimplicialComplex, template: nn.Module, spec: dict, **extra: Any) -> Path:
    info = dict(cx.describe(), names=list(cx.space.names), anchors=cx.anchors().detach().cpu().clone())
    return save_checkpoint(path, template, spec, kind="simplex", simplex=info, **extra)


def load_simplex(path: str | Path, device="cpu", model: str | None = None) -> tuple[SimplicialComplex, nn.Module,
                                                                                   Checkpoint]:
    """Read a simplex checkpoint: the complex (all anchors fixed) and its template network.
    ``model``: the user's ``--model``, which must name the simplex's own
    network (and so trusts a ``package.module:factory`` it names)."""
    ck = load_checkpoint(path)
    info = ck.extra.get("simplex")
    if ck.kind != "simplex" or not isinstance(info, dict):
        raise UserError(f"{ck.path}: a '{ck.kind}' checkpoint, not a simplex; make one with 'landscape simplex'")
    template = load_model(ck, own_network(ck, model), template=True)
    space = ParamSpace.of(template)
    if list(info["names"]) != list(space.names):
        raise UserError(f"{ck.path}: the simplex's parameter names do not match its model")
    cx = SimplicialComplex(space, info["anchors"], None, info["simplexes"], info["labels"])
    device = resolve_device(device)
    return cx.to(device), template.to(device).eval(), ck


# ---------------------------------------------------------------------------- one phase
def _train_vertex(template: nn.Module, spec: dict, fixed: torch.Tensor, labels: list[str],
                  simplexes: list[tuple[int, ...]], cfg: SimplexConfig, data: Dataset, out: Path | None,
                  resume: bool, progress, seed: int, stage: str, stream: int = 0) -> torch.Tensor:
    """Train one new vertex (index len(fixed)) against the frozen ones; returns its (P,) vector.
    ``stage`` names it in the log lines ("vertex 2 of 3"); ``seed`` draws its start, ``stream``
    its training's random numbers (:class:`~landscape.train.Task`)."""
    space = ParamSpace.of(template)
    # A phase not begun before is simply started (no "nothing to resume" line per vertex).
    start_epoch, state, metrics = prepare_run(out, cfg, resume and out is not None and out.exists(), "simplex")
    if start_epoch == -1:
        cx, _, _ = load_simplex(out / "model.pt", data.device, spec["name"])  # a name the template was built from
        return cx.anchors()[-1].detach()
    torch.manual_seed(seed)
    fresh = from_spec(spec, trusted=True)  # the same name load_points already built (or the user gave)
    init = space.flatten(fresh).to(device=data.device, dtype=fixed.dtype)[None]
    if cfg.init == "centre":
        # The centroid of the frozen vertices, moved along a random direction by
        # init_scale times the centroid's norm.
        centre = fixed.mean(dim=0, keepdim=True)
        direction = torch.randn(init.shape, generator=torch.Generator().manual_seed(seed), dtype=init.dtype)
        init = centre + cfg.init_scale * centre.norm() * direction.to(init.device) / direction.norm()
        if not bool(torch.isfinite(init).all()):  # checked up front on the modes; a centroid can still be larger
            _check_init(cfg, [centre[0]])
    mask = space.trainable_mask(init.device)
    if mask is not None:  # parameters the network does not train: the centroid's, kept there (frozen_pin)
        init[:, ~mask] = fixed.mean(dim=0, keepdim=True)[:, ~mask]
    cx = SimplicialComplex(space, fixed, init, simplexes, labels).to(data.device)
    with torch.no_grad():
        v0 = float(cx.volumes().sum())
    log_v0 = abs(float(np.log(v0))) if v0 > 0 else 1.0
    weight = float(cfg.lam / max(log_v0, 1.0))
    if start_epoch == 0 and is_main():
        _note_first_step(cfg, weight, float((init[0] - fixed.mean(dim=0)).norm()), stage)
    buffers = {n: b.detach() for n, b in template.named_buffers()}
    k = cfg.samples
    world = rank_and_world()[1]

    def loss(x, y):
        template.train()
        coeffs = cx.sample(k, volume_weighted=cfg.volume_weighted).to(fixed.dtype)  # (K, A)
        if world > 1:
            dist.broadcast(coeffs, src=0)  # every rank fits the same points on its slice of the batch
        with torch.autocast(fixed.device.type, enabled=False):  # the weights stay fp32 under --amp (Curve.points)
            points = coeffs @ cx.anchors()  # (K, P)
        batched = {n: b.unsqueeze(0).repeat(k, *([1] * b.dim())) for n, b in buffers.items()}
        logits = forward_points(template, space.unflatten(points), batched, x)  # (K, B, classes)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(k))
        if weight > 0:
            nll = nll - weight * torch.log(cx.volumes().sum().clamp(min=1e-300)).float()
        return nll, logits

    def save(path: Path, kind: str, extra: dict[str, Any]) -> None:
        extra["meta"] = dict(extra["meta"], volume_weight=weight)
        save_simplex(path, cx, template, spec, **extra)

    def restore(ck: Checkpoint) -> None:
        with torch.no_grad():
            cx.free.copy_(ck.extra["simplex"]["anchors"][-1:].to(cx.free))

    def finish() -> dict[str, Any]:
        with torch.no_grad():
            return {"volume": float(cx.volumes().sum()), "volume_weight": weight, "vertex": labels[-1]}

    task = Task(module=cx, loss=loss, save=save, restore=restore, finish=finish, epoch_eval=None,
                weight_decay=cfg.wd, spec=spec, command="simplex", kind="simplex",
                lr_flag=_rate_flags(cfg), network=template, after_step=frozen_pin(cx.free, space),
                # the complex's buffers: its frozen vertices, alike on every rank
                sync_buffers=False, stage=stage, stream=stream)
    run_training(task, cfg, data, out, start_epoch=start_epoch, state=state, metrics=metrics, progress=progress)
    return cx.anchors()[-1].detach()


def _check_init(cfg: SimplexConfig, centres: Sequence[torch.Tensor]) -> None:
    """A new vertex starts at a centroid moved by --init-scale times its norm
    (``centres``: the first vertices' centroids). Refused in one line, before
    any training: a scale that would put it at infinite weights in the
    weights' precision (it would diverge and blame --lr), weights whose norm
    is beyond it, and a scale too small for that precision to resolve around
    the centroid (the start would be another distance away, or the centroid
    itself: no volume)."""
    if cfg.init != "centre" or not centres:
        return
    for c in centres:
        c = c.detach()
        norm = float(c.double().norm())
        limit = torch.finfo(c.dtype).max
        if not norm <= limit:  # NaN too
            raise UserError(f"the modes' weights have norm {norm:.3g}, beyond what their {c.dtype} holds: a simplex "
                            f"around them cannot be grown")
        if not cfg.init_scale * norm <= limit:
            raise UserError(f"--init-scale {cfg.init_scale:g} would move a new vertex to infinite weights (it is a "
                            f"fraction of the centroid's norm, here {norm:.3g}; default 0.05)")
        direction = torch.randn(c.shape, generator=torch.Generator().manual_seed(0), dtype=c.dtype).to(c.device)
        target = cfg.init_scale * norm
        moved = float(((c + target * direction / direction.norm()) - c).double().norm())
        if not abs(moved - target) <= 0.01 * target:
            raise UserError(f"--init-scale {cfg.init_scale:g} is below what the weights' {c.dtype} resolves around "
                            f"the centroid (norm {norm:.3g}): a new vertex would start {moved:.3g} from it, not "
                            f"{target:.3g}; use a larger one (default 0.05)")


def _note_first_step(cfg: SimplexConfig, weight: float, edge: float, stage: str) -> None:
    """A note where the volume term's first step is longer than the new vertex's distance from the centroid:
    the gradient of -weight x log V at a vertex a height h above the others' hull is weight / h, so a start
    close to them (a small --init-scale) throws the vertex far on its first steps."""
    step = cfg.lr * weight / edge if edge > 0 else float("inf")
    if cfg.init == "centre" and step > edge:
        where = f"{stage}: " if stage else ""
        print(f"note: {where}the volume term's first step (about --lr x weight / distance = {step:.3g}) is "
              f"{step / edge:.3g} times the new vertex's distance from the centroid ({edge:.3g}): its first steps "
              f"may throw it far; a larger --init-scale, or a smaller --lam or --lr, avoids it", file=sys.stderr)


def _rate_flags(cfg: SimplexConfig) -> str:
    """What a divergence names beside --lr: the settings above 1 that may have caused it."""
    others = [f"--lam {cfg.lam:g}, which scales the volume term"] if cfg.lam > 1 else []
    if cfg.init == "centre" and cfg.init_scale > 1:
        others.append(f"--init-scale {cfg.init_scale:g}, which places the new vertex")
    return "--lr" + (f" (or {'; or '.join(others)})" if others else "")


def _config(config: SimplexConfig | None, first: str | Path, overrides: dict[str, Any], caller: str = "grow_simplex",
            data: Dataset | None = None) -> tuple[SimplexConfig, str | None]:
    """The run's settings, and the network name the user gave (``--model``:
    a foreign mode's architecture, or the word that a landscape mode's
    ``package.module:factory`` is trusted), else None. ``data`` given with
    ``dataset=`` naming another is refused (:func:`refuse_data_twice`)."""
    check_keywords(SimplexConfig, overrides, caller)
    refuse_data_twice(data, overrides)
    named = named_model(config, overrides)
    base = asdict(config) if config is not None else {}
    source = load_checkpoint(first)
    if source.model is not None:  # the network is the mode's, and the config records it
        overrides = dict(overrides, **network_of(source, named, overrides.get("model_kwargs")))
    else:
        require_architecture(source, named)
    given = {f.name for f in fields(SimplexConfig)} & set(overrides)
    inherited = {k: v for k, v in data_settings(source).items() if k not in given and k not in base}
    cfg = SimplexConfig(**{**inherited, **base, **overrides})
    refuse_given_data_path(cfg, overrides, base)
    cfg.validate()
    return cfg, named


def _join(cfg: SimplexConfig) -> torch.device:
    """This process's device; under torchrun, the process group joined (so rank
    0 alone gives notes) and a batch size the ranks cannot share refused,
    before any folder is claimed."""
    device = process_device(cfg.device)
    check_world(cfg.batch_size, rank_and_world()[1])
    return device


def _given_data(config: SimplexConfig | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The data options the caller chose (a config object's, and the keywords given); the modes' stored
    settings give the rest."""
    given = {**(asdict(config) if config is not None else {}), **overrides}
    return {k: given[k] for k in DATA_FIELDS if given.get(k) is not None}


def _load_modes(paths: Sequence[str | Path], cfg: SimplexConfig, named: str | None, given: dict[str, Any],
                data: Dataset | None):
    """The modes as points of one network, and that network's spec; ``data``
    (made in Python) is taken as given, else the modes' stored data settings
    with the caller's ``given`` options (:func:`_given_data`), checked by
    :func:`~landscape.inputs.load_points` as every command checks its
    inputs: a mode trained on other data named, and the data each records."""
    device = _join(cfg)
    pts = load_points(list(paths), model=named, model_kwargs=cfg.model_kwargs if named else None,
                      data_overrides=None if data is not None else given, device=device, data=data)
    first = pts.checkpoints[0].model
    spec = (dict(first) if first is not None else
            model_spec(cfg.model, pts.data.num_classes, pts.data.input_shape, **cfg.model_kwargs))
    return pts, spec


def _finish(cx: SimplicialComplex, template: nn.Module, spec: dict, data: Dataset, cfg: SimplexConfig,
            out: Path | None, eval_samples: int, face_resolution: int, extra_summary: dict,
            sample_seed: int | None = None, progress=None) -> SimplexResult:
    if out is not None and (out / "summary.json").exists() and is_main():  # a finished run, resumed
        try:
            stored = read_json(out / "summary.json")
        except UserError:  # unreadable: it is about to be replaced anyway
            stored = None
        stored = stored if isinstance(stored, dict) else {}
        if "face_grid" not in stored:  # a summary of an earlier build: the grid from its points, (N + 1)(N + 2) / 2
            try:
                with np.load(out / "simplex.npz", allow_pickle=False) as z:
                    points = len(z["face_barycentric"])
                stored["face_grid"] = round((math.sqrt(8 * points + 1) - 3) / 2)
            except (OSError, KeyError, ValueError):
                pass  # none stored (no face), or unreadable: replaced all the same
        changed = [f"{what} {now} (the stored results used {stored[key]})"
                   for key, what, now in (("samples", "--eval-samples", eval_samples),
                                          ("face_grid", "--face-grid", face_resolution))
                   if stored.get(key) is not None and stored[key] != now]
        if changed:
            print(f"note: {out}: evaluating again with {' and '.join(changed)}; they are replaced", file=sys.stderr)
    ev = evaluate_simplex(cx, template, data, out, samples=eval_samples, face_resolution=face_resolution,
                          wd=cfg.wd, seed=cfg.seed if sample_seed is None else sample_seed, progress=progress,
                          volume_weighted=cfg.volume_weighted)
    summary = {**ev["summary"], **extra_summary, "config": cfg.to_json()}
    if out is not None and is_main():  # the summary first, as every run writes it (model.pt marks the run finished)
        write_json(out / "summary.json", summary)
        save_simplex(out / "model.pt", cx, template, spec, meta={"train_config": cfg.to_json(),
                                                                  "dataset": data.describe()})
        remove_file(out / LINE_STORE)  # a complex's straight line, kept until the run is finished
    return SimplexResult(complex=cx, model=template, summary=summary, out=out, data=data,
                         sample_probs=ev["probs"])


def _check_counts(eval_samples: object, face_resolution: object, **counts: object) -> tuple[int, ...]:
    """The evaluation's counts and a fit's (``vertices`` at least 2, ``connectors`` at least 1) as ints, or
    one line before any work (from Python they are not parsed: 2.5, "3", 0)."""
    least = {"vertices": 2, "connectors": 1, "eval_samples": 1, "face_resolution": 1}
    flags = {"vertices": "--vertices", "connectors": "--connectors", "eval_samples": "--eval-samples",
             "face_resolution": "--face-grid"}
    checked = []
    for key, value in (*counts.items(), ("eval_samples", eval_samples), ("face_resolution", face_resolution)):
        n = check_whole(flags[key], value)
        if n < least[key]:
            raise UserError(f"{flags[key]} must be at least {least[key]}"
                            + (" (the mode and one more)" if key == "vertices" else "") + f", got {value}")
        checked.append(n)
    return tuple(checked)


def _vertex_seed(seed: int, j: int, component: int = 0) -> int:
    """The seed of vertex ``j``'s start; ESPRO's components other than the first draw theirs independently
    (tagged 1: the epochs' streams are tagged 2, the evaluated samples 3)."""
    if component:
        return derived_seed(seed, 1, component, j)
    return (seed * 1000 + j) % (2**63 - 1)


def _sample_seed(seed: int, component: int) -> int:
    """The seed of ESPRO component ``component``'s evaluated samples: the first's as a simplex grown alone draws
    them (the run's seed), the others' their own."""
    return derived_seed(seed, 3, component) if component else seed


def _began_before_own_draws(out: Path | None, resume: bool) -> bool:
    """Whether ``out`` holds an ESPRO run begun by a build whose components shared their draws (its claim has
    no "draws"): resumed, it keeps them (every component's vertices seeded as the first's, evaluated samples
    seeded 1000 + its index), so that it is neither build's run half and half."""
    stored = stored_config(out) if out is not None and resume else None
    return isinstance(stored, dict) and stored.get("command") == "simplex" and bool(stored.get("espro")) \
        and "draws" not in stored


def _claim(out: Path | None, what: dict[str, Any], resume: bool) -> None:
    """Take ``out`` for a simplex run before any work: refused when it holds another
    command's results, when it holds a simplex run and ``resume`` is not given,
    and when the run it holds was of another kind, other checkpoints or other
    counts (its vertices would be reused for the wrong modes); its config.json
    then says what the folder holds. Under torchrun every rank checks, then
    rank 0 writes."""
    claim_folder(out, "simplex")
    if out is None:
        return
    stored = stored_config(out)
    if stored is not None and stored.get("command") == "simplex":
        if not resume:
            raise UserError(f"{out} already holds a simplex run; pass --resume to continue it, or choose another --out")
        held, now = _comparable(stored), _comparable({"command": "simplex", **what})
        if held != now:
            counts = {key: flag for key, flag in (("vertices", "--vertices"), ("connectors", "--connectors"))
                      if held.get(key) != now.get(key)}
            others = {k: v for k, v in held.items() if k not in counts}
            if counts and others == {k: v for k, v in now.items() if k not in counts}:
                asked = ", ".join(f"{flag} {held.get(k)}, not {now.get(k)}" for k, flag in counts.items())
                raise UserError(f"{out} holds a simplex run of the same checkpoints with {asked}; choose another "
                                f"--out, or resume it with its own count")
            raise UserError(f"{out} holds a simplex run of other checkpoints or settings "
                            f"({_describe(stored)}); choose another --out")
    wait_for_ranks()
    if is_main():
        write_json(out / "config.json", {"command": "simplex", **what})


def _comparable(what: dict[str, Any]) -> dict[str, Any]:
    """A simplex folder's claim with its checkpoint paths made absolute, without the evaluation's samples
    that earlier builds' ESPRO claims held (other --eval-samples re-evaluate a run) and without the mark of
    components drawing their own random numbers (:func:`_began_before_own_draws`)."""
    out = {}
    for key, value in what.items():
        if key in ("eval_samples", "draws"):
            continue
        if key in ("base", "modes", "bases"):
            value = [str(Path(v).resolve()) for v in value] if isinstance(value, list) else str(Path(value).resolve())
        out[key] = value
    return out


def _describe(stored: dict[str, Any]) -> str:
    kind = "ESPRO" if stored.get("espro") else stored.get("kind", "?")
    inputs = stored.get("base") or stored.get("modes") or stored.get("bases")
    return f"{kind} of {', '.join(inputs) if isinstance(inputs, list) else inputs}"


def grow_simplex(base: str | Path, out: str | Path | None = None, *, vertices: int = 3,
                 config: SimplexConfig | None = None, resume: bool = False, progress: bool | None = None,
                 eval_samples: int = 32, face_resolution: int = 10, sample_seed: int | None = None,
                 data: Dataset | None = None, **overrides: Any) -> SimplexResult:
    """SPRO around one mode: the simplex {mode, v_1, .., v_(vertices-1)}, vertices
    added one at a time (each trained ``epochs`` epochs, the earlier frozen).
    ``sample_seed`` (default: the config's seed) draws the evaluated samples.
    ``data``: a Dataset made in Python (default: what the mode records)."""
    return _grow_simplex(base, out, vertices=vertices, config=config, resume=resume, progress=progress,
                         eval_samples=eval_samples, face_resolution=face_resolution, sample_seed=sample_seed,
                         data=data, stage="", overrides=overrides)


def _grow_simplex(base: str | Path, out: str | Path | None, *, vertices: int, config: SimplexConfig | None,
                  resume: bool, progress, eval_samples: int, face_resolution: int, sample_seed: int | None,
                  data: Dataset | None, stage: str, overrides: dict[str, Any], component: int = 0) -> SimplexResult:
    """:func:`grow_simplex`; ``stage`` leads its log lines' names (ESPRO's "component 2 of 3"), ``component``
    its place among ESPRO's (0: the first, or a simplex alone)."""
    vertices, eval_samples, face_resolution = _check_counts(eval_samples, face_resolution, vertices=vertices)
    cfg, named = _config(config, base, overrides, data=data)
    out = Path(out) if out is not None else None
    pts, spec = _load_modes([base], cfg, named, _given_data(config, overrides), data)  # before the folder is claimed
    _check_init(cfg, pts.vectors)
    check_fits(4.0 * vertices * pts.vectors[0].numel(), f"--vertices {vertices} (the vertices, vertices x parameters "
               f"floats)", pts.vectors[0].device)
    _claim(out, {"kind": "simplex", "base": str(base), "vertices": vertices}, resume)
    template, data = pts.model, pts.data
    anchors = [pts.vectors[0]]
    labels = ["mode"]
    for j in range(1, vertices):
        labels.append(f"v{j}")
        phase = out / f"vertex-{j}" if out is not None else None
        vertex = ", ".join(filter(None, [stage, f"vertex {j + 1} of {vertices}"]))  # the mode is vertex 1
        new = _train_vertex(template, spec, torch.stack(anchors), labels, [tuple(range(j + 1))], cfg, data, phase,
                            resume, progress, seed=_vertex_seed(cfg.seed, j, component), stage=vertex,
                            stream=component)
        anchors.append(new)
    cx = SimplicialComplex(ParamSpace.of(template), torch.stack(anchors), None, [tuple(range(vertices))], labels)
    return _finish(cx, template, spec, data, cfg, out, eval_samples, face_resolution,
                   {"kind": "simplex", "base": str(base), "lam": cfg.lam}, sample_seed, progress)


def connect_modes(modes: Sequence[str | Path], out: str | Path | None = None, *, connectors: int = 2,
                  config: SimplexConfig | None = None, resume: bool = False, progress: bool | None = None,
                  eval_samples: int = 32, face_resolution: int = 10, data: Dataset | None = None,
                  **overrides: Any) -> SimplexResult:
    """SPRO joining fixed modes through shared connectors: simplexes
    {mode_i, c_1, .., c_m}, connectors added one at a time. ``data``: a
    Dataset made in Python (default: what the modes record)."""
    refuse_single_path(modes, "modes", None)  # a complex joins two or more
    if len(modes) < 2:
        raise UserError("a complex needs two or more --modes")
    connectors, eval_samples, face_resolution = _check_counts(eval_samples, face_resolution, connectors=connectors)
    cfg, named = _config(config, modes[0], overrides, "connect_modes", data)
    out = Path(out) if out is not None else None
    pts, spec = _load_modes(modes, cfg, named, _given_data(config, overrides), data)  # before the folder is claimed
    refuse_same_weights(pts.vectors, modes, "a complex joins different modes")
    _check_init(cfg, [torch.stack(pts.vectors).mean(dim=0)])
    check_fits(4.0 * (len(modes) + connectors) * pts.vectors[0].numel(), f"--connectors {connectors} (the modes and "
               f"connectors, vertices x parameters floats)", pts.vectors[0].device)
    _claim(out, {"kind": "complex", "modes": [str(p) for p in modes], "connectors": connectors}, resume)
    template, data = pts.model, pts.data
    m = len(modes)
    anchors = list(pts.vectors)
    labels = [f"mode {i + 1}" for i in range(m)]
    for j in range(1, connectors + 1):
        labels.append(f"c{j}")
        simplexes = [(i, *range(m, m + j)) for i in range(m)]
        phase = out / f"connector-{j}" if out is not None else None
        anchors.append(_train_vertex(template, spec, torch.stack(anchors), labels, simplexes, cfg, data, phase,
                                     resume, progress, seed=_vertex_seed(cfg.seed, j),
                                     stage=f"connector {j} of {connectors}"))
    simplexes = [(i, *range(m, m + connectors)) for i in range(m)]
    cx = SimplicialComplex(ParamSpace.of(template), torch.stack(anchors), None, simplexes, labels)
    # The straight segment between the first two modes, for comparison.
    line = line_coefficients(cx.num_anchors, 0, 1, 1.0, np.linspace(0, 1, 21))
    lm = run_sweep(template, cx.anchors().detach(), line, data, wd=cfg.wd,  # under torchrun: shared out
                   store=out / LINE_STORE if out is not None else None, resume=True, replace_other="damaged",
                   progress=progress, what="the straight line between the first two modes")
    line_summary = {"train_loss_max": float(lm["train_loss"].max()), "train_loss_barrier": barrier(lm["train_loss"]),
                    "train_nll_barrier": barrier(lm["train_nll"]), "test_error_max": float(lm["test_error"].max())}
    return _finish(cx, template, spec, data, cfg, out, eval_samples, face_resolution,
                   {"kind": "complex", "modes": [str(p) for p in modes], "lam": cfg.lam, "line": line_summary},
                   progress=progress)


# ---------------------------------------------------------------------------- evaluation
EVAL_STORE = "simplex.partial.npz"  # the evaluation's points done so far, until simplex.npz is written
LINE_STORE = "line.partial.npz"  # a complex's straight line between its first two modes, until the run is finished


def evaluate_simplex(cx: SimplicialComplex, template: nn.Module, data: Dataset, out: Path | None = None, *,
                     samples: int = 32, face_resolution: int = 10, wd: float = 0.0, seed: int = 0,
                     batch_size: int = 1000, progress=False, volume_weighted: bool = False) -> dict[str, Any]:
    """Metrics at the vertices, each simplex's barycentre and ``samples``
    uniform samples (batch norm re-estimated at each; a simplex of the
    complex chosen uniformly, or in proportion to its volume with
    ``volume_weighted``, as the fit sampled), the ensemble of the
    samples, and a triangular grid over the face of the first simplex's first
    three vertices. Writes ``simplex.npz`` and returns {"summary", "arrays"}."""
    samples, face_resolution = _check_counts(samples, face_resolution)
    seed = check_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        W = cx.anchors().detach()
        vols = cx.volumes()
        n_a, n_s = cx.num_anchors, len(cx.simplexes)
        sample_c = cx.sample(samples, gen, volume_weighted=volume_weighted)
        rows = [torch.eye(n_a, dtype=torch.float64, device=W.device), cx.barycentres(), sample_c]
        face_c = None
        first = cx.simplexes[0]
        if len(first) >= 3:
            fb = face_grid(face_resolution).to(W.device)
            face_c = torch.zeros(fb.shape[0], n_a, dtype=torch.float64, device=W.device)
            face_c[:, list(first[:3])] = fb
            rows.append(face_c)
        coeffs = torch.cat(rows)
    # under torchrun the ranks share the points out, and every rank gets them all; with ``out`` the points done
    # are kept in EVAL_STORE, which a stopped evaluation's rerun continues (the folder is this run's: the caller
    # claimed it, and the store's fingerprint of anchors, points and settings refuses any other evaluation's)
    store = Path(out) / EVAL_STORE if out is not None else None
    res = run_sweep(template, W, coeffs.cpu().numpy(), data, wd=wd, batch_size=batch_size, return_probs=True,
                    store=store, resume=True, replace_other="other --eval-samples or --face-grid",
                    progress=progress, what=f"{n_a} vertices, {n_s} barycentre(s), {samples} samples"
                    + (f", the face's {face_c.shape[0]} grid points" if face_c is not None else ""))
    sl_v = slice(0, n_a)
    sl_s = slice(n_a + n_s, n_a + n_s + samples)
    labels_y = data.y_test.cpu().numpy()
    ens = ensemble_metrics(res["probs"][sl_s], labels_y)
    summary = {
        "volume": float(vols.sum()),
        "volumes": [float(v) for v in vols],
        "vertices": [dict(label=lab, **{m: float(res[m][i]) for m in METRICS}) for i, lab in enumerate(cx.labels)],
        "barycentres": [{m: float(res[m][n_a + j]) for m in METRICS} for j in range(n_s)],
        "samples": samples,
        "test_error_mean": float(res["test_error"][sl_s].mean()),
        "test_error_max": float(res["test_error"][sl_s].max()),
        "test_nll_mean": float(res["test_nll"][sl_s].mean()),
        "train_loss_mean": float(res["train_loss"][sl_s].mean()),
        "train_loss_max": float(res["train_loss"][sl_s].max()),
        "ensemble": {"test_error": ens["error"], "test_nll": ens["nll"], "members": samples},
        "simplexes": [list(s) for s in cx.simplexes],
        "labels": cx.labels,
        "face_labels": [cx.labels[i] for i in first[:3]] if face_c is not None else None,
        "face_grid": face_resolution if face_c is not None else None,
        "wd": wd,
        "eval_split": data.eval_split,
        "synthetic": data.synthetic,
        "dataset": data.describe(),
        "notes": "batch norm re-estimated at every point; samples: a simplex chosen uniformly, then Dirichlet(1) "
                 "weights; ensemble: averaged predicted probabilities of the samples",
    }
    arrays = {"sample_coefficients": sample_c.cpu().numpy()}
    for m in METRICS:
        arrays[f"vertex_{m}"] = res[m][sl_v]
        arrays[f"sample_{m}"] = res[m][sl_s]
    if face_c is not None:
        off = n_a + n_s + samples
        arrays["face_barycentric"] = face_grid(face_resolution).numpy()
        for m in METRICS:
            arrays[f"face_{m}"] = res[m][off:]
    if out is not None and is_main():
        write_json(Path(out) / "simplex_summary.json", summary)  # first: simplex.npz is what plot looks for
        write_npz(Path(out) / "simplex.npz", arrays)
        remove_file(store)
    return {"summary": summary, "arrays": arrays, "probs": res["probs"][sl_s]}


def espro(bases: Sequence[str | Path], out: str | Path | None = None, *, vertices: int = 3,
          config: SimplexConfig | None = None, resume: bool = False, progress: bool | None = None,
          eval_samples: int = 32, face_resolution: int = 10, data: Dataset | None = None,
          **overrides: Any) -> dict[str, Any]:
    """ESPRO: grow a simplex around each mode, then ensemble samples across the
    components; test error and NLL against the number of samples per component.
    ``data``: a Dataset made in Python, every component's (default: what the
    modes record, which must then be the same)."""
    refuse_single_path(bases, "bases", "grow_simplex")
    if len(bases) < 2:
        raise UserError("ESPRO needs two or more --base checkpoints")
    vertices, eval_samples, face_resolution = _check_counts(eval_samples, face_resolution, vertices=vertices)
    out = Path(out) if out is not None else None
    cfg = _config(config, bases[0], overrides, "espro", data)[0]
    device = _join(cfg)  # settings refused before the folder is claimed
    # The components' predictions are averaged image by image: their data must be the same (a base that held out a
    # validation split would be evaluated on it, the others on the test set).
    ckpts = [require_network(load_checkpoint(b)) for b in bases]
    if data is None:  # else every component is evaluated on the data given
        check_same_data(ckpts, _given_data(config, overrides))
        # loaded and checked against what every base records before the folder is claimed (a refusal
        # left a config.json that made the rerun look like a run to resume); the components take it
        data = run_data(cfg, device, None, ckpts, config, overrides)
    weights = [torch.cat([t.detach().flatten().float() for k, t in ck.state_dict.items()  # weights only
                          if t.is_floating_point() and not k.endswith(("running_mean", "running_var"))])
               for ck in ckpts]
    _check_init(cfg, weights)
    note_same_weights(weights, bases, "that mode counts twice in the ensemble")  # its simplex grows twice
    shared = _began_before_own_draws(out, resume)
    _claim(out, {"espro": True, "bases": [str(b) for b in bases], "vertices": vertices,
                 **({} if shared else {"draws": "own"})}, resume)
    comps, probs = [], []
    for i, b in enumerate(bases):
        # Each component's own evaluation draws the samples the ensemble averages.
        r = _grow_simplex(b, out / f"component-{i + 1}" if out is not None else None, vertices=vertices,
                          config=config, resume=resume, progress=progress, eval_samples=eval_samples,
                          face_resolution=face_resolution, sample_seed=1000 + i if shared else _sample_seed(cfg.seed, i),
                          data=data, stage=f"component {i + 1} of {len(bases)}", overrides=overrides,
                          component=0 if shared else i)
        comps.append(r)
        probs.append(r.sample_probs)  # (S, M, classes)
    data = comps[0].data
    labels = data.y_test.cpu().numpy()
    stacked = np.stack(probs)  # (components, S, M, classes)
    curve = []
    for s in range(1, eval_samples + 1):
        m = ensemble_metrics(stacked[:, :s].reshape(-1, *stacked.shape[2:]), labels)
        curve.append({"samples_per_component": s, "members": len(bases) * s, "test_error": m["error"],
                      "test_nll": m["nll"]})
    modes = [c.summary["vertices"][0] for c in comps]
    summary = {
        "components": len(bases),
        "vertices": vertices,
        "ensemble": curve,
        "ensemble_test_error": curve[-1]["test_error"],
        "ensemble_test_nll": curve[-1]["test_nll"],
        "modes": [{"path": str(b), "test_error": m["test_error"], "test_nll": m["test_nll"]}
                  for b, m in zip(bases, modes)],
        "component_volumes": [c.summary["volume"] for c in comps],
        "eval_split": data.eval_split,
        "synthetic": data.synthetic,
        "dataset": data.describe(),
        "notes": "modes evaluated with batch norm re-estimated, like every sampled point",
    }
    if out is not None and is_main():
        write_json(out / "summary.json", summary)  # config.json was written by _claim at the start
    return summary

