"""Evaluation of networks on a dataset split.

``evaluate_model`` reports one network's loss and error. ``evaluate_points``
is the engine every landscape goes through: points = coefficients @ anchors
in the model's flat parameter space, K points per pass over the data, batch
norm re-estimated per point. ``evaluate_points_sequential`` is the plain
one-point-at-a-time loop it is checked against.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.parameter import is_lazy

from .bn import (bn_buffer_names, bn_collecting, bn_modules, instance_norms, note_per_batch_norms, population_bn,
                 reestimate_bn, sample_weighted)
from .data import as_dataset
from .errors import UserError, check_nonnegative, first_line, is_out_of_memory, is_whole, note_once
from .layout import image_layout, takes_channels_last, to_channels_last
from .weights import ParamSpace, stack_anchors

__all__ = ["METRICS", "PRECISIONS", "check_eval_options", "precision_amp", "evaluate_model", "l2_penalty", "evaluate_points", "evaluate_points_sequential",
           "choose_points_per_pass", "default_points_per_pass", "forward_points", "train_logits", "copy_network", "probs_of", "resolve_strategy", "unique_rows", "BN_STATS", "resolve_bn_stats",
           "keep_freed_memory", "misclassified", "set_lazy_shapes", "weights_finite"]


def evaluate_model(
    model: nn.Module,
    data,
    split: str = "test",
    *,
    batch_size: int = 1000,
    amp: bool = False,
) -> dict[str, float]:
    """Mean NLL and error (percent) of ``model`` on one split of ``data``.

    A network that cannot take the data or gives too few logits is one line
    (:func:`check_network`), and so are non-finite weights; a sample whose
    logits hold a NaN predicts nothing and counts as an error. Lazy layers
    get their shapes first (:func:`set_lazy_shapes`). Runs in eval mode
    (batch norm uses its running statistics) without
    augmentation, on channels-last image batches where the model takes them
    (:mod:`landscape.layout`), and restores every module's train/eval mode
    afterwards.
    Returns ``{"nll", "error", "n"}``; sums are kept on the device so there is
    one host synchronisation per call.
    """
    check_network(model, data)
    note_per_batch_norms(model, batch_size)  # once per process: train's epochs and ensemble's members too
    if not weights_finite(model):  # then name the first (one synchronisation when all are finite)
        bad = next(name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all()))
        raise UserError(f"the network's parameter {bad} holds a NaN or infinite value; refusing to evaluate it")
    return _model_metrics(model, data, split, batch_size, amp)


def weights_finite(module: nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite (one device sync)."""
    params = [p.detach() for p in module.parameters()]
    return not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def _model_metrics(model: nn.Module, data, split: str, batch_size: int, amp: bool) -> dict[str, float]:
    """:func:`evaluate_model`'s sums, unchecked: the sequential reference evaluates points whose weights
    overflowed to inf, as the engine does, and reports NaN for them."""
    device = data.device
    nll = torch.zeros((), dtype=torch.float64, device=device)
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    layout = image_layout(model, data.x_train[:2])
    with modes_kept(model), torch.inference_mode():
        model.eval()
        for x, y in data.batches(split, batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(layout(x))  # (B, classes)
            logp = torch.log_softmax(logits.float(), dim=-1)
            nll += F.nll_loss(logp, y, reduction="sum").double()
            wrong += misclassified(logits, y, logp).sum()
            n += y.numel()
    if n == 0:
        return {"nll": float("nan"), "error": float("nan"), "n": 0}
    return {"nll": nll.item() / n, "error": 100.0 * wrong.item() / n, "n": n}


def misclassified(logits: torch.Tensor, y: torch.Tensor, logp: torch.Tensor | None = None) -> torch.Tensor:
    """Which samples ``logits`` (..., B, classes) get wrong: the top class is not ``y``, or the softmax is
    undefined (a NaN logit, +inf, every logit -inf: a network whose output overflowed predicts nothing, and
    argmax would read a NaN as a vote for class 0). The probabilities of such a sample are NaN, and the
    ensembles count it wrong alike. ``logp``: the logits' log-softmax, where the caller has it."""
    logp = torch.log_softmax(logits.float(), dim=-1) if logp is None else logp
    return (logits.argmax(dim=-1) != y) | torch.isnan(logp).any(dim=-1)


def set_lazy_shapes(model: nn.Module, data) -> None:
    """Give ``model``'s lazy layers (``nn.LazyLinear`` ...) their shapes from
    one no-grad forward of zeros shaped as ``data``'s inputs, before any
    inference-mode forward: weights made there would be inference tensors,
    which the user's later training could not use. Nothing for other models."""
    from .models import materialize

    materialize(model, tuple(data.x_train.shape[1:]), "the network")


PRECISIONS = ("fp32", "bf16")


def precision_amp(precision: str) -> bool:
    """Whether ``precision`` asks for bf16 autocast (batch-norm statistics and
    sums stay in fp32); a ``UserError`` for an unknown name."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return precision == "bf16"


@contextmanager
def modes_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Restore the train/eval flag of every submodule on exit."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def l2_penalty(model: nn.Module, wd: float) -> float:
    """``0.5 * wd * sum ||p||^2`` over trainable parameters: the weight-decay
    term the papers add to the training NLL when they report "train loss"."""
    total = None
    with torch.no_grad():  # summed where the weights are, in order, read once (a GPU waits once, not per tensor)
        for p in model.parameters():
            if p.requires_grad:
                square = p.detach().double().pow(2).sum()
                total = square if total is None else total.add_(square)
    return 0.5 * wd * (0.0 if total is None else float(total))


# ---------------------------------------------------------------------------
# The engine: anchors x coefficients -> metrics, K points per data pass.
# ---------------------------------------------------------------------------
METRICS = ("train_loss", "train_nll", "train_error", "test_nll", "test_error")
STRATEGIES = ("auto", "vmap", "loop")


def evaluate_points(
    model: nn.Module,
    anchors: torch.Tensor | Sequence[Mapping[str, torch.Tensor] | nn.Module],
    coefficients: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    data,
    *,
    wd: float = 0.0,
    batch_size: int = 1000,
    points_per_pass: int | None = None,
    bn_batches: int | None = None,
    return_probs: bool = False,
    strategy: str = "auto",
    amp: bool = False,
    channels_last: bool = True,
    bn_stats: str = "auto",
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Evaluate the points ``coefficients @ anchors`` of ``model``'s weight space.

    ``anchors`` is an ``(A, P)`` matrix over ``ParamSpace.of(model)`` (or a
    list of A flat weight vectors, state dicts or modules), ``coefficients``
    is ``(N, A)``. Buffers
    other than batch-norm statistics come from ``model``. For every point the
    batch-norm statistics are re-estimated from one unaugmented pass over the
    training data (``bn_batches`` limits it), then the point is evaluated in
    eval mode on the training and test splits.

    ``bn_stats`` says how the statistics are estimated (:data:`BN_STATS`):
    ``"batches"`` is the papers' ``update_bn``: the average of per-batch
    statistics over batches of ``batch_size``, each weighted by its size, then a second pass for the
    training metrics. ``"population"`` takes the whole training set as one
    batch: each layer's statistics are then the exact training-set mean and
    (population) variance of its input, with every earlier layer normalised
    by its own exact statistics, and that same pass is the eval-mode forward
    of the training set, so the training metrics come from it (one pass over
    the training data instead of two). ``"auto"``: population when the pass
    fits in memory and ``bn_batches`` is None, else batches.

    K = ``points_per_pass`` points share each pass over the data: with
    ``strategy="vmap"`` they run as one batched call (``torch.vmap`` over
    ``functional_call``); with ``"loop"`` one after another on each batch.
    ``"auto"`` picks vmap on CUDA and loop on the CPU, where batched
    (grouped) convolutions run slower than plain ones and bf16 autocast does
    not reach them (``amp`` with vmap on the CPU is refused). Image batches are fed
    in channels-last layout (``channels_last``), which the CPU's convolutions
    run about 1.3x faster; results agree to rounding. A network that cannot
    take that layout (:func:`takes_channels_last`) is fed NCHW batches.

    Returns arrays of shape (N,): ``train_loss`` (NLL + 0.5 * wd * ||w||^2),
    ``train_nll``, ``train_error``, ``test_nll``, ``test_error`` (errors in
    percent), and with ``return_probs`` the test-set probabilities
    ``probs`` (N, M, classes) float32. ``model`` is left exactly as it was.
    """
    check_eval_options(batch_size, bn_batches, points_per_pass, wd)
    data = as_dataset(data)
    set_lazy_shapes(model, data)
    note_per_batch_norms(model, batch_size)
    space = ParamSpace.of(model)
    device = data.device
    W = _anchor_matrix(space, anchors).to(device)  # (A, P)
    C = torch.as_tensor(np.asarray(coefficients, dtype=np.float64) if not isinstance(coefficients, torch.Tensor)
                        else coefficients).to(device=device, dtype=W.dtype)
    if C.dim() != 2 or C.shape[1] != W.shape[0]:
        raise UserError(f"coefficients must be (N, {W.shape[0]}): a row of {W.shape[0]} per point, one per anchor; "
                        f"got {tuple(C.shape)}")
    if C.shape[0] == 0:
        raise UserError("coefficients has no rows: no point to evaluate")
    check_finite(W, C)
    chosen = resolve_strategy(strategy, device)  # auto stays auto below: a network vmap cannot batch loops
    if amp and chosen == "vmap" and device.type == "cpu":
        # vmap runs a convolution as aten::convolution, which CUDA's autocast lowers
        # and the CPU's does not: the "bf16" result would be fp32 convolutions.
        raise UserError("bf16 with strategy vmap on the CPU would run the convolutions in fp32 "
                        "(CPU autocast does not reach vmap's batched convolutions); use strategy loop")
    probe = _probe_forward(model, data)  # also refuses data the network cannot take, in one line
    channels_last = channels_last and takes_channels_last(model, data.x_train[:2])
    population = resolve_bn_stats(bn_stats, model, data, bn_batches, probe=probe) == "population"
    # A batch-norm layer called several times per forward keeps only its last call's
    # statistics in a momentum-1 pass; such models average every call as update_bn does (by size),
    # one point at a time (the weighting counts each point's own statistics, which vmap does not show).
    every_call = not population and bool(probe.reused_bn)
    if every_call:
        strategy = chosen = "loop"
    if device.type == "cpu":
        keep_freed_memory()
    # Identical points (a path's shared ends, the centre of every ray) are evaluated once.
    rows, inverse = unique_rows(C.cpu().numpy())
    C = torch.as_tensor(rows, device=device, dtype=W.dtype)
    n = C.shape[0]
    k = points_per_pass or default_points_per_pass(model, data, "population" if population else "batches",
                                                    batch_size, chosen)
    # A pass that ran out of memory is split in halves until it fits, and that many points are
    # remembered for the network and these settings (a sweep calls once per pass).
    fits = model.__dict__.setdefault(_POINTS_FIT, {})
    setting = (str(device), len(data.y_train), len(data.y_test), batch_size, bn_batches, population, amp, chosen,
               channels_last, return_probs)
    k = min(k, fits.get(setting, k))
    results: dict[str, list] = {m: [] for m in METRICS}
    if return_probs:
        results["probs"] = []
    from .progress import Progress

    bar = Progress(n, desc="points", unit="pt", progress=progress)
    template = _Template(model)
    try:
        lo = 0
        while lo < n:
            points = combine(C[lo:lo + k], W)  # (K, P)
            try:
                chunk = _evaluate_chunk(template, space, points, data, wd=wd, batch_size=batch_size,
                                        bn_batches=bn_batches, return_probs=return_probs, strategy=strategy,
                                        amp=amp, channels_last=channels_last, population=population,
                                        every_call=every_call)
            except ValueError as e:  # F.batch_norm's refusal of one value per channel (BatchNorm1d, one image)
                if "more than 1 value per channel" not in str(e):
                    raise
                raise UserError(f"batch norm cannot estimate statistics from one value per channel: "
                                f"{first_line(e)} (the data has {len(data.y_train)} training images)") from None
            except (RuntimeError, MemoryError) as e:
                if points.shape[0] == 1 or not is_out_of_memory(e):
                    raise
                chunk = None  # split below, once this handler has let go of the failed pass's tensors
            if chunk is None:
                tried = points.shape[0]
                del points
                k = fits[setting] = tried // 2
                _release_cached_memory(device)
                print(f"landscape: out of memory with {tried} points per pass; going on with {k}",
                      file=sys.stderr, flush=True)
                continue
            for key, value in chunk.items():
                results[key].append(value)
            lo += points.shape[0]
            bar.update(points.shape[0])
    finally:
        template.restore()
        bar.close()
    return {key: np.concatenate(values)[inverse] for key, values in results.items()}


def check_finite(anchors: torch.Tensor, coefficients: torch.Tensor) -> None:
    """:class:`UserError` naming the first anchor (row of the (A, P) matrix) or
    coefficient row that is not finite: one such anchor would make every point
    NaN, since 0 x NaN and 0 x inf are NaN."""
    bad = (~torch.isfinite(anchors)).sum(dim=1)
    if bool(bad.any()):
        a = int(torch.nonzero(bad)[0])
        raise UserError(f"anchor {a} has {int(bad[a])} non-finite weight{'s' if int(bad[a]) > 1 else ''}; "
                        f"every point formed from it would be NaN")
    rows = ~torch.isfinite(coefficients).all(dim=1)
    if bool(rows.any()):
        raise UserError(f"coefficient row {int(torch.nonzero(rows)[0])} is not finite")


def check_eval_options(batch_size: int, bn_batches: int | None, points_per_pass: int | None,
                       wd: float = 0.0) -> None:
    """:class:`UserError` for a batch size, a number of batch-norm batches or
    of points per pass below 1 (None means the default for the last two), or
    a weight decay that is negative or not finite."""
    for flag, value in (("--batch-size", batch_size), ("--bn-batches", bn_batches),
                        ("--points-per-pass", points_per_pass)):
        if value is not None and (not is_whole(value) or value < 1):
            raise UserError(f"{flag} must be a whole number of at least 1, got {value}")
    check_nonnegative("--wd", wd)


def unique_rows(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``c`` (N, A) in order of first appearance, and for
    every row of ``c`` its index among them: ``rows[inverse] == c``."""
    _, first, inverse = np.unique(c, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # distinct rows by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return c[np.sort(first)], rank[inverse.ravel()]


def resolve_strategy(strategy: str, device: torch.device) -> str:
    """``auto`` -> ``vmap`` on CUDA, ``loop`` elsewhere; other names checked and kept."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if strategy == "auto":
        return "vmap" if torch.device(device).type == "cuda" else "loop"
    return strategy


BN_STATS = ("auto", "population", "batches")


def resolve_bn_stats(bn_stats: str, model: nn.Module, data, bn_batches: int | None = None, *,
                     probe: _Probe | None = None) -> str:
    """``"population"`` or ``"batches"``: how batch-norm statistics will be
    estimated for ``model`` on ``data`` (see :func:`evaluate_points`).

    ``auto`` chooses population when ``model`` has batch norm, ``bn_batches``
    is None, one forward of the whole training set fits the memory budget
    (half the free memory on CUDA, 2 GiB on the CPU) with every layer output
    under 2^31 elements, no batch-norm layer runs twice per forward and no
    instance-norm layer keeps running statistics; otherwise batches.
    A model without batch norm resolves to ``"batches"`` (nothing is estimated).
    ``probe`` passes a :func:`_probe_forward` of ``model`` already made.
    """
    if bn_stats not in BN_STATS:
        raise UserError(f"unknown bn-stats {bn_stats!r}; choose one of: {', '.join(BN_STATS)}")
    if bn_stats == "population" and bn_batches is not None:
        raise UserError("--bn-stats population uses the whole training set; it cannot be combined with --bn-batches")
    if not bn_modules(model) or bn_stats == "batches":
        return "batches"
    if bn_stats == "auto" and bn_batches is not None:
        return "batches"
    instance = instance_norms(model)
    if instance and bn_stats == "population":
        raise UserError(f"bn-stats population normalises the whole training set as one batch, which instance norm "
                        f"does not (layer {', '.join(instance)} keeps running statistics); use --bn-stats batches")
    if instance:
        return "batches"
    probe = probe or _probe_forward(model, data)
    if bn_stats == "population":
        if probe.reused_bn:
            raise UserError(f"bn-stats population needs each batch-norm layer to run once per forward, but "
                            f"{', '.join(probe.reused_bn)} runs more than once; use --bn-stats batches")
        return "population"
    if probe.reused_bn:
        return "batches"
    # One forward of the whole training set must fit (_whole_set_bytes), and its largest layer output
    # must stay under 2^31 elements (kernels index with 32 bits; some split such tensors, some fail).
    largest = probe.largest * len(data.y_train)
    fits = _whole_set_bytes(probe, len(data.y_train), data.device) <= _memory_budget(data.device) and largest < 2**31
    return "population" if fits else "batches"


def _whole_set_bytes(probe: "_Probe", images: int, device: torch.device) -> int:
    """Bytes a population pass of ``images`` images is taken to hold at one point. On CUDA, where a pass
    that does not fit fails, LIVE_COPIES + 1 float32 copies of the largest layer output (one more than
    :func:`_live_bytes` sizes a point of a pass at: a lone point's measured peak); the CPU's budget is a
    pass size, not its memory, and four copies (the output being written, its input, a residual and a
    spare) keep population statistics for PreResNet-20 on 5,000 CIFAR-sized images, where they are faster."""
    copies = LIVE_COPIES + 1 if device.type == "cuda" else 4
    return copies * 4 * probe.largest * images


@dataclass(frozen=True)
class _Probe:
    """What one inference forward of a few training images shows of a model."""

    largest: int  # elements per image of the largest layer output
    output_bytes: float  # bytes per image of all layer outputs together
    reused_bn: list[str]  # batch-norm layers called more than once (a block applied twice)


def _probe_forward(model: nn.Module, data, n: int = 2) -> _Probe:
    """One eval-mode forward of the first ``n`` training images, moved to the
    model's device (the caller's model may sit elsewhere than the data: the
    engine evaluates copies of its weights), with hooks on the leaf modules
    and the batch-norm layers (modes kept). A batch-norm layer that one forward calls twice
    matters to population statistics: their pass normalises every call by the
    statistics the layer keeps, which are only its last call's."""
    data = as_dataset(data)
    floats = {p.dtype for p in model.parameters() if p.is_floating_point() and not is_lazy(p)}
    if floats - {torch.float32}:  # before a lazy layer's shapes are set: its forward of float32 zeros would fail
        raise UserError(f"the network's parameters are {', '.join(sorted(str(d) for d in floats))}; "
                        f"landscape runs float32 networks (bf16 by --precision bf16): call model.float()")
    set_lazy_shapes(model, data)
    bn = {m: name or "(the model)" for name, m in bn_modules(model)}
    calls: dict[str, int] = {}
    largest, total = 0, 0

    def hook(m, _i, out):
        nonlocal largest, total
        if m in bn:
            calls[bn[m]] = calls.get(bn[m], 0) + 1
        if isinstance(out, torch.Tensor):
            largest = max(largest, out.numel())
            total += out.numel() * out.element_size()

    # The leaf modules, and every batch-norm layer: one may have children (a parametrized weight).
    handles = [m.register_forward_hook(hook) for m in model.modules() if m in bn or not list(m.children())]
    try:
        with modes_kept(model), torch.inference_mode():
            model.eval()
            where = next(iter(model.parameters()), None)
            x = data.x_train[:n] if where is None else data.x_train[:n].to(where.device)
            try:
                out = model(x)
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                ids = ("; an embedding given standardised inputs? integer inputs (token ids) need "
                       "--data-normalization 0/1, stored as int16/int32/int64 (uint8 is read as pixels, value / "
                       "255): see the README's data section") if "index out of range" in str(e) else ""
                raise UserError(f"the network does not accept this data's inputs of shape "
                                f"{tuple(x.shape[1:])}: {first_line(e)}{ids}") from None
    finally:
        for h in handles:
            h.remove()
    classes = getattr(data, "num_classes", None)
    if not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == x.shape[0]):
        gave = (str(tuple(out.shape)) if isinstance(out, torch.Tensor) else
                f"{type(out).__name__}: return the logits tensor from forward() (or wrap the network in a module "
                f"that picks it out)")
        raise UserError(f"the network should give (batch, classes) logits, but gave {gave}")
    if classes is not None and out.shape[1] < classes:
        raise UserError(f"the network gives {out.shape[1]} outputs, but the data has {classes} classes")
    _note_probabilities(model, out)
    images = max(1, x.shape[0])
    return _Probe(largest // images, total / images, [name for name, c in calls.items() if c > 1])


def _note_probabilities(model: nn.Module, out: torch.Tensor) -> None:
    """Once per process and network (its class and layers): a note on stderr
    where ``out``, the network's outputs for a few images, are probabilities
    (non-negative, every row summing to 1 within 2e-3, which a softmax taken
    in half precision meets): taken as logits, they are put through a second
    softmax, and every NLL (and the training loss) is of those, not of the
    network's probabilities. Logits summing to 1 in every row by chance are
    not met."""
    rows = out.detach().double()
    if out.shape[1] < 2 or not (bool((rows >= 0).all()) and bool(((rows.sum(dim=1) - 1).abs() < 2e-3).all())):
        return
    note_once(("probabilities", f"{type(model).__qualname__} {hash(repr(model))}"),
              "the network's outputs are non-negative and sum to 1 in every row, as probabilities do; landscape "
              "takes them as logits and applies the softmax itself, so its NLL (and training) would be of a second "
              "softmax: end the network before its softmax (or with log_softmax)")


def check_network(model: nn.Module, data) -> None:
    """One line (:class:`UserError`) when ``model`` cannot take the data's
    inputs or does not give (batch, classes) logits with at least the data's
    classes: one eval-mode forward of two training images, modes kept. Run
    before training, so that a user's own network that does not fit its data
    stops with the reason, not a loss function's traceback (a network the
    toolkit cannot use at all is refused where its lazy shapes are set,
    :func:`set_lazy_shapes`)."""
    _probe_forward(model, data)


_POINTS_FIT = "_landscape_points_fit"  # model.__dict__ key: points per pass that fit, by settings


def _release_cached_memory(device: torch.device) -> None:
    """Give the caching allocator's free blocks back (CUDA), so that a smaller pass after a failed
    one is not refused for fragments."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _memory_budget(device: torch.device) -> float:
    """Bytes one pass may hold: half the free memory on CUDA, 2 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # ours to reuse
        return 0.5 * (free + cached)
    return 2 * 2**30


def whole_set_fits(model: nn.Module, data, factor: float) -> bool:
    """Whether ``factor`` times the layer outputs of the whole training set,
    run as one batch, fit :func:`_memory_budget`: a backward pass through it
    keeps about 3 (NUTS's gradient), a double backward about 6 (the
    Hessian-vector products of ``sharpness``)."""
    probe = _probe_forward(model, data)
    return factor * probe.output_bytes * len(data.y_train) <= _memory_budget(data.device)


_FP32_SETTINGS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")


def _backend(name: str):
    target = torch.backends
    for part in name.split("."):
        target = getattr(target, part)
    return target


@contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off on CUDA, for gradients that must be fp32 (its 10-bit mantissa
    would be noise in N x NLL, its differences and its curvature). Set and
    put back through the per-backend ``fp32_precision`` settings where torch
    has them (2.9 on): there, reading the older ``allow_tf32`` flags raises
    once a program has set the newer ones (so, inside this block, code that
    reads ``torch.backends.cudnn.allow_tf32`` would fail). CUDA's matmul and
    cuDNN only: the CPU's oneDNN setting (``mkldnn``) is left as it is."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        saved = [(_backend(name), _backend(name).fp32_precision) for name in _FP32_SETTINGS]
        try:
            for backend, _ in saved:
                backend.fp32_precision = "ieee"
            yield
        finally:
            for backend, value in saved:
                backend.fp32_precision = value
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def keep_freed_memory() -> None:
    """Make glibc serve large blocks from a heap that keeps its freed memory
    (on Linux; elsewhere nothing happens). Done once per process.

    By default every activation larger than a few MiB is a fresh ``mmap``
    whose pages fault in on first touch; on the digits convnet that made
    batch-norm and ReLU run at 3 GB/s and a forward of 1437 images 2x slower
    than one of 256. Blocks up to 1 GiB now come from the heap, and the heap
    keeps 256 MiB spare at its top when it shrinks, so the next pass reuses
    pages already mapped. ``bench/allocator.py`` measures the settings one by
    one (the mmap threshold alone is slower than the defaults; with the top
    pad, 1.3x faster per point).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(2**30))  # M_MMAP_THRESHOLD: blocks up to 1 GiB from the heap
        libc.mallopt(ctypes.c_int(-2), ctypes.c_int(2**28))  # M_TOP_PAD: keep 256 MiB when trimming the top
    except (OSError, AttributeError):
        pass


_MALLOC_TUNED = False


def choose_points_per_pass(model: nn.Module, data, batch_size: int, numel: int, strategy: str) -> int:
    """Points per data pass from the free memory and the model's size.

    The loop strategy holds K copies of the weights, which save it no time:
    no more than keep them under :data:`LOOP_WEIGHT_BYTES`; vmap also holds K sets
    of the activations alive at once, :func:`_live_bytes` of a probe forward.
    A pass that runs out of memory all the same is split
    (:func:`evaluate_points`).
    """
    budget = _memory_budget(data.device)
    per_point = 4 * numel * 3  # the point's weights, its batched view, headroom
    most = 256
    if strategy == "loop":
        most = min(most, LOOP_WEIGHT_BYTES // (LOOP_BYTES_PER_WEIGHT * max(numel, 1)))
    if strategy == "vmap":
        probe = _probe_forward(model, data)
        per_point += _live_bytes(probe, batch_size)
        # vmap makes the K points' largest layer outputs one tensor: under 2^31 elements (32-bit indexing)
        most = min(most, (2**31 - 1) // max(probe.largest * batch_size, 1))
    return int(max(1, min(most, budget // max(per_point, 1))))


LOOP_POINTS_PER_PASS = 8
LOOP_PASS_BYTES = 64 * 2 ** 30  # layer outputs one loop pass may write: 15-30 s on 2 CPU cores
# The K points' weights a loop pass holds (each in the anchors' dtype, float64 for a plane's basis, and as the
# network's float32 parameters): K saves the loop no time, so it takes no more than these bytes of them.
LOOP_WEIGHT_BYTES = 2 ** 30
LOOP_BYTES_PER_WEIGHT = 16


def default_points_per_pass(model: nn.Module, data, bn_stats: str, batch_size: int, strategy: str) -> int:
    """K when none is given: :func:`choose_points_per_pass` for a pass of the
    whole training set (``bn_stats="population"``) or of ``batch_size`` images.

    The loop strategy runs each point's own forwards, so a larger K saves it
    nothing (measured on the digits CNN: 64 points take the same time at K
    = 1, 8 and 256): it takes at most :data:`LOOP_POINTS_PER_PASS`, no more
    than keep the points' weights under :data:`LOOP_WEIGHT_BYTES` (a 25M-parameter
    network: 2 points, not 8 at 350 MB each: :func:`choose_points_per_pass`), and no
    more than keep a pass's layer outputs (every image's, train and test) under
    :data:`LOOP_PASS_BYTES`, so that a sweep stores its progress every few
    points, or every point where a point takes a minute (8 on the digits, 4
    for PreResNet-20 on 6,000 CIFAR-sized images, 1 for the convnet on
    MNIST-sized data)."""
    pass_size = len(data.y_train) if bn_stats == "population" else batch_size
    strategy = resolve_strategy(strategy, data.device)
    k = choose_points_per_pass(model, data, pass_size, ParamSpace.of(model).numel, strategy)
    if strategy != "loop":
        return k
    images = len(data.y_train) * (2 if bn_stats == "batches" else 1) + len(data.y_test)
    per_point = _probe_forward(model, data).output_bytes * images
    return max(1, min(k, LOOP_POINTS_PER_PASS, int(LOOP_PASS_BYTES // max(per_point, 1.0))))


LIVE_COPIES = 8


def _live_bytes(probe: _Probe, images: int) -> int:
    """Bytes one point's forward of ``images`` images holds at once, without
    a graph: :data:`LIVE_COPIES` float32 copies of its largest layer output
    (a layer's input and output, a residual, batch norm's temporaries; under
    ``vmap`` a point's share was measured at 3 (VGG16-BN) to 6 (PreResNet-20)
    such copies, a lone point's at up to 9). Earlier outputs are freed as the
    forward goes, so the sum of every layer's output (what a backward keeps)
    would size K several times too small."""
    return int(LIVE_COPIES * 4 * probe.largest * images)


def combine(coefficients: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The points ``coefficients @ anchors`` ((K, A) x (A, P) -> (K, P)), each
    row summed anchor by anchor in a fixed order, so that a point's weights do
    not depend on which other points share its pass (a matrix product's
    blocking, and so its rounding, changes with K)."""
    out = coefficients[:, :1] * anchors[0]
    for a in range(1, anchors.shape[0]):
        out.addcmul_(coefficients[:, a:a + 1], anchors[a].unsqueeze(0))
    return out


def _anchor_matrix(space: ParamSpace, anchors) -> torch.Tensor:
    if isinstance(anchors, (list, tuple)) and not anchors:
        raise UserError("no anchors given: evaluate_points needs at least one network (a module, a state dict "
                        "or a flat weight vector)")
    if isinstance(anchors, (list, tuple)) and all(isinstance(a, torch.Tensor) and a.dim() == 1 for a in anchors):
        wrong = next((i for i, a in enumerate(anchors) if a.numel() != space.numel), None)
        if wrong is not None:
            raise UserError(f"anchor {wrong} is a flat vector of {anchors[wrong].numel()} weights; the network has "
                            f"{space.numel}")
        anchors = torch.stack([a.detach().to(anchors[0].device) for a in anchors])  # flat weight vectors
    if isinstance(anchors, torch.Tensor):
        if anchors.dim() == 2 and anchors.shape[0] == 0:
            raise UserError("no anchors given: the anchor matrix has no rows")
        if anchors.dim() != 2 or anchors.shape[1] != space.numel:
            raise UserError(f"anchors must be (A, {space.numel}): a row of the network's {space.numel} weights per "
                            f"anchor; got {tuple(anchors.shape)}")
        return anchors.detach().float()
    return stack_anchors(space, list(anchors)).float()


class _Template:
    """Holds the caller's model for functional calls and puts back what it touched."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modes = {m: m.training for m in model.modules()}
        self.buffers = dict(model.named_buffers())
        self.bn = bn_modules(model)
        self.bn_names = bn_buffer_names(model, self.bn)

    def restore(self) -> None:
        for m, mode in self.modes.items():
            m.training = mode


def forward_points(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                   x: torch.Tensor, strategy: str = "auto") -> torch.Tensor:
    """Logits (K, B, classes) of K points of ``model`` on one batch ``x`` (B, ...).

    ``params`` and ``buffers`` map names to (K, *shape) tensors; batch-norm
    layers in train mode update the buffers in place (one copy per point).
    ``strategy``: ``vmap`` (one batched call), ``loop`` (one call per point),
    ``auto`` (vmap on CUDA, loop on the CPU). A network torch cannot batch
    (an operation without a batching rule, such as ``nn.LSTM``, or a layout
    vmap does not take) is found by a two-image trial once per network and
    mode: ``auto`` then loops, ``vmap`` is refused in one line. Differentiable.
    """
    if resolve_strategy(strategy, x.device) == "vmap":
        failure = _vmap_failure(model, params, buffers, x)
        if failure is None:
            return train_logits(vmap(_call(model), in_dims=(0, 0, None), randomness="different")(params, buffers, x))
        if strategy == "vmap":
            raise UserError(f"strategy vmap: torch cannot batch this network's points ({failure}); use strategy loop")
    k = next(iter(params.values())).shape[0]
    outs = [train_logits(functional_call(model, ({n: p[i] for n, p in params.items()},
                                                 {n: b[i] for n, b in buffers.items()}), (x,)))
            for i in range(k)]
    return torch.stack(outs)


def copy_network(net: nn.Module) -> nn.Module:
    """A deep copy of ``net``, or one line (:class:`UserError`) where torch
    cannot copy it: the deprecated ``torch.nn.utils.weight_norm`` keeps its
    computed weight as a non-leaf tensor, which ``copy.deepcopy`` refuses."""
    try:
        return copy.deepcopy(net)
    except RuntimeError as e:
        if "deepcopy protocol" not in str(e):
            raise
        raise UserError("the network cannot be copied: a weight computed from others (the deprecated "
                        "torch.nn.utils.weight_norm keeps one) is not a leaf tensor; use "
                        "torch.nn.utils.parametrizations.weight_norm") from None


def train_logits(out: object) -> torch.Tensor:
    """``out``, a network's output in train mode, when it is a tensor of
    logits; else one line (:class:`UserError`), since a network such as
    Inception may give a tuple (its auxiliary heads) only in train mode,
    where the eval-mode check before training does not see it."""
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the network gave a {type(out).__name__} in train mode; landscape needs (batch, classes) "
                        f"logits in train and eval mode alike: return the main output only (no auxiliary heads)")
    return out


def _call(model: nn.Module):
    def f(p, b, xb):
        return functional_call(model, (p, b), (xb,))
    return f


# Kept on the network itself ({(modes, layout, dtype, device, autocast): None when vmap runs it, else why not}):
# a module that defines __eq__ without __hash__ could not key a dictionary.
_VMAP_TRIED = "_landscape_vmap_tried"


def _vmap_failure(model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                  x: torch.Tensor) -> str | None:
    """Why ``vmap`` cannot run ``model`` on such inputs, or None: tried once per
    network, mode, input layout and autocast setting, on two points (copies
    of the buffers, no graph) and two images, with the random number
    generators put back after it (a dropout layer's draws, and so a seeded
    or resumed run, are those of the run without the trial). Running out of
    memory is raised, and a CUDA error (which may be the launch's, or a broken
    context's) is returned without being remembered."""
    layout = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    modes = tuple(m.training for m in model.modules())  # batch norm may be in train mode in an eval-mode model
    key = (modes, layout, x.dtype, x.device.type, torch.is_autocast_enabled(x.device.type))
    tried = model.__dict__.setdefault(_VMAP_TRIED, {})
    if key not in tried:
        p = {n: v[:2].detach() for n, v in params.items()}
        b = {n: v[:2].clone() for n, v in buffers.items()}
        try:
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad():
                vmap(_call(model), in_dims=(0, 0, None), randomness="different")(p, b, x[:2])
            tried[key] = None
        except (RuntimeError, NotImplementedError) as e:
            if is_out_of_memory(e):  # says nothing of batching: the caller splits the pass
                raise
            if isinstance(e, getattr(torch, "AcceleratorError", ())):
                return first_line(e)  # a CUDA error may pass (a launch's limits) or not: this call loops, unremembered
            tried[key] = first_line(e)
    return tried[key]


class _BnCounts:
    """Records, per batch-norm layer, how many values each channel's statistics
    were computed from in the last forward (N, or N*H*W for images)."""

    def __init__(self, layers):
        self.counts: dict[str, int] = {}
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in layers]

    def _hook(self, name):
        def hook(_m, args):
            x = args[0]
            self.counts[name] = x.numel() // x.shape[1] if x.dim() > 1 else x.numel()
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.inference_mode()
def _evaluate_chunk(template: _Template, space: ParamSpace, points: torch.Tensor, data, *, wd: float,
                    batch_size: int, bn_batches: int | None, return_probs: bool, strategy: str,
                    amp: bool, channels_last: bool, population: bool = False,
                    every_call: bool = False) -> dict[str, np.ndarray]:
    model = template.model

    def layout(x: torch.Tensor) -> torch.Tensor:
        return to_channels_last(x) if channels_last else x  # images: takes_channels_last said so

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return forward_points(model, params, buffers, layout(x), strategy)

    device = points.device
    k = points.shape[0]
    params = space.unflatten(points)  # {name: (K, *shape)}
    if channels_last:
        params = {n: to_channels_last(p) if p.dim() == 5 else p for n, p in params.items()}
    buffers = {n: b.detach().to(device).unsqueeze(0).repeat(k, *([1] * b.dim())) for n, b in template.buffers.items()}
    sums = {split: _Sums(k, device, return_probs and split == "test") for split in ("train", "test")}

    # Every estimator starts from reset statistics: momentum 1 weighs the old ones by 0, and 0 x inf
    # (a corrupt stored running_var) is NaN, which would survive into every estimate; the
    # size-weighted average's first call (momentum 1) would meet the same.
    for n, b in buffers.items():
        if n in template.bn_names:
            b.fill_(1 if n.endswith("running_var") else 0)
    if template.bn and population:
        # The whole training set as one batch: momentum 1 makes the running
        # statistics this batch's (with the unbiased variance), and the
        # forward normalised every layer by exactly these statistics, so its
        # logits are the eval-mode logits once the variance is made the
        # population one.
        counter = _BnCounts(template.bn)
        try:
            with bn_collecting(model, momentum=1.0):
                sums["train"].add(forward(data.x_train), data.y_train)
        finally:
            counter.remove()
        for name, n in counter.counts.items():
            if n > 1:
                buffers[f"{name}.running_var" if name else "running_var"].mul_((n - 1) / n)
        for n in buffers:
            if n.endswith("num_batches_tracked") and n in template.bn_names:
                buffers[n].fill_(1)
    elif template.bn and every_call:
        # Every call of every layer averaged, each weighted by its batch's size, from the reset statistics.
        with bn_collecting(model, momentum=None), sample_weighted(template.bn):
            for x in _statistics_batches(data, batch_size, bn_batches):
                forward(x)
    elif template.bn:
        # Per-batch statistics (momentum 1 makes the running stats equal the batch's),
        # averaged with each batch weighted by its size, as the papers' update_bn does.
        stats = {n: torch.zeros_like(buffers[n], dtype=torch.float64) for n in buffers
                 if n in template.bn_names and not n.endswith("num_batches_tracked")}
        used = images = 0
        with bn_collecting(model, momentum=1.0):
            for x in _statistics_batches(data, batch_size, bn_batches):
                forward(x)
                for n in stats:
                    stats[n] += x.shape[0] * buffers[n].double()
                used += 1
                images += x.shape[0]
        for n, s in stats.items():
            buffers[n].copy_((s / max(images, 1)).to(buffers[n].dtype))
        for n in buffers:
            if n.endswith("num_batches_tracked") and n in template.bn_names:
                buffers[n].fill_(used)

    model.eval()
    try:
        for split in ("train", "test"):
            if split == "train" and template.bn and population:
                continue  # measured by the statistics pass
            for x, y in data.batches(split, batch_size):
                sums[split].add(forward(x), y)
    finally:
        template.restore()
    out: dict[str, np.ndarray] = {}
    for split, acc in sums.items():
        out[f"{split}_nll"], out[f"{split}_error"] = acc.result()
    if return_probs:
        out["probs"] = sums["test"].probs()
    sq = space.squared_norm(points.double())  # over the trained parameters, as training decays them
    out["train_loss"] = out["train_nll"] + (0.5 * wd * sq).cpu().numpy()
    return out


def _statistics_batches(data, batch_size: int, bn_batches: int | None) -> Iterator[torch.Tensor]:
    """The training images of a batch-norm pass: batches of ``batch_size`` (no batch of one sample:
    :meth:`Dataset.statistics_batches`), the first ``bn_batches`` only."""
    for used, (x, _) in enumerate(data.statistics_batches(batch_size)):
        if bn_batches is not None and used >= bn_batches:
            return
        yield x


def probs_of(logits: torch.Tensor) -> torch.Tensor:
    """Predicted probabilities of ``logits`` (..., classes), in float64.

    A model average's NLL is -log of its members' mean probability of the
    true class. In float32 a probability underflows to 0 at about 1e-45
    (a member 104 nats wrong); in float64 it stays exact to about 1e-308
    (708 nats), so the average's NLL agrees with its members' own NLLs
    wherever they are finite in any sense that matters.
    """
    return torch.log_softmax(logits.double(), dim=-1).exp()


class _Sums:
    """Running NLL and error sums of K points over the batches of one split,
    kept on the device (one host synchronisation at the end)."""

    def __init__(self, k: int, device: torch.device, keep_probs: bool):
        self.k = k
        self.nll = torch.zeros(k, dtype=torch.float64, device=device)
        self.wrong = torch.zeros(k, dtype=torch.int64, device=device)
        self.count = 0
        self.keep = keep_probs
        self.kept: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        logits = logits.float()  # (K, B, classes)
        logp = torch.log_softmax(logits, dim=-1)
        self.nll += -logp.gather(-1, y.expand(self.k, -1).unsqueeze(-1)).squeeze(-1).double().sum(dim=1)
        self.wrong += misclassified(logits, y, logp).sum(dim=1)
        self.count += y.numel()
        if self.keep:  # float64: a true class's probability stays exact down to 1e-308 (probs_of)
            self.kept.append(probs_of(logits))  # stays on the device: no synchronisation per batch

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.count, 1)
        return (self.nll / n).cpu().numpy(), (100.0 * self.wrong.double() / n).cpu().numpy()

    def probs(self) -> np.ndarray:
        return torch.cat(self.kept, dim=1).cpu().numpy()


# ---------------------------------------------------------------------------
# The reference: one point at a time, the way the papers' scripts do it.
# ---------------------------------------------------------------------------
def evaluate_points_sequential(
    model: nn.Module,
    anchors: torch.Tensor | Sequence[Mapping[str, torch.Tensor] | nn.Module],
    coefficients,
    data,
    *,
    wd: float = 0.0,
    batch_size: int = 1000,
    bn_batches: int | None = None,
    bn_stats: str = "batches",
    return_probs: bool = False,
) -> dict[str, np.ndarray]:
    """The plain loop the engine must agree with: for each point, copy the
    weights into a copy of the model, re-estimate batch norm
    (:func:`landscape.bn.reestimate_bn`, or :func:`landscape.bn.population_bn`
    for ``bn_stats="population"``), evaluate train and test in eval mode.
    Same outputs as :func:`evaluate_points`."""
    data = as_dataset(data)
    set_lazy_shapes(model, data)
    population = resolve_bn_stats(bn_stats, model, data, bn_batches) == "population"
    space = ParamSpace.of(model)
    device = data.device
    W = _anchor_matrix(space, anchors).to(device)
    C = torch.as_tensor(np.asarray(coefficients, dtype=np.float64)).to(device=device, dtype=W.dtype)
    net = copy.deepcopy(model).to(device)
    results: dict[str, list] = {m: [] for m in METRICS}
    if return_probs:
        results["probs"] = []
    with torch.no_grad():
        for c in C:
            point = combine(c.unsqueeze(0), W)[0]  # (P,)
            for name, value in space.unflatten(point).items():
                net.get_parameter(name).copy_(value)
            if population:
                population_bn(net, data.x_train)
            else:
                reestimate_bn(net, data.statistics_batches(batch_size), bn_batches)
            m_train = _model_metrics(net, data, "train", batch_size, False)
            m_test = _model_metrics(net, data, "test", batch_size, False)
            results["train_nll"].append(m_train["nll"])
            results["train_error"].append(m_train["error"])
            results["train_loss"].append(m_train["nll"] + 0.5 * wd * float(space.squared_norm(point.double())))
            results["test_nll"].append(m_test["nll"])
            results["test_error"].append(m_test["error"])
            if return_probs:
                net.eval()
                results["probs"].append(torch.cat([probs_of(net(x)).cpu()
                                                   for x, _ in data.batches("test", batch_size)]).numpy())
    return {k: np.stack(v) if k == "probs" else np.asarray(v, dtype=np.float64) for k, v in results.items()}
