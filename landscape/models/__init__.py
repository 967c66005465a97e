"""Model registry: every architecture is built by name with :func:`create_model`.

A factory has the signature ``factory(num_classes, input_shape, **kwargs) ->
nn.Module``; ``input_shape`` is ``(C, H, W)`` for images or ``(D,)`` for
feature vectors, and both it and ``num_classes`` come from the dataset. The
module maps ``(B, *input_shape)`` to logits ``(B, num_classes)``.

Your own model needs no registration: pass ``"package.module:factory"`` as the
name. It is imported, and called with ``num_classes=`` and ``input_shape=``
when its signature takes them, plus your keyword arguments.

    >>> model = create_model("preresnet", num_classes=10, input_shape=(3, 32, 32), depth=110)
"""

from __future__ import annotations

import importlib
import inspect
import operator
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import is_lazy

from ..device import seed_everything
from ..errors import UserError, first_line
from ..weights import refuse_unusable, unwrap
from . import preresnet, simple, vgg, wide_resnet

__all__ = ["MODELS", "register_model", "list_models", "buildable", "stored_spec", "create_model", "model_spec", "model_options", "from_spec", "check_spec_fits",
           "has_lazy", "materialize", "unsaved_buffers"]

Factory = Callable[..., nn.Module]

MODELS: dict[str, Factory] = {}

# Arguments that create_model supplies itself; they are not user options.
_DATA_ARGS = ("num_classes", "input_shape")


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator that registers ``factory`` under ``name`` and returns it unchanged.

    Names may not contain ``:`` (that marks ``module:factory`` imports), and a
    name cannot be taken over by a different factory; a factory of the same
    module and name (a notebook cell run again, edited or not) replaces it.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise UserError(f"model name must be a non-empty string without ':'; got {name!r}")

    def decorator(factory: Factory) -> Factory:
        existing = MODELS.get(name)
        if existing is not None and existing is not factory and not _same_definition(existing, factory):
            raise UserError(f"model name {name!r} is already registered to {getattr(existing, '__module__', '?')}."
                            f"{getattr(existing, '__qualname__', type(existing).__name__)}")
        MODELS[name] = factory
        return factory

    return decorator


def _same_definition(a: object, b: object) -> bool:
    """Whether two factories are one definition made again (a notebook cell run again): functions or classes
    of the same module and qualified name, not a local one (two closures of one maker share their name)."""
    names = [(getattr(f, "__module__", None), getattr(f, "__qualname__", None)) for f in (a, b)]
    return names[0] == names[1] and names[0][1] is not None and "<locals>" not in names[0][1]


def buildable(name: object) -> bool:
    """Whether this process can build model ``name``: registered here, or a
    ``module:factory`` (imported when trusted). A name registered from Python
    by another process (the one that trained a checkpoint) is not."""
    return isinstance(name, str) and (":" in name or name in MODELS)


def stored_spec(stored: dict, model: str | None = None) -> dict:
    """A copy of a checkpoint's ``{"name", "kwargs"}``, its name replaced by
    the user's ``model`` when this process cannot build the stored one
    (:func:`buildable`): the user's word for which factory builds it, with
    the stored options; the weights' names and shapes are checked on loading."""
    name = stored["name"]
    return {"name": model if model is not None and not buildable(name) else name, "kwargs": dict(stored["kwargs"])}


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(MODELS)


def create_model(name: str, *, num_classes: int, input_shape: tuple[int, ...], **kwargs: object) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes and inputs of shape ``input_shape``.

    ``name`` is a registered name (see :func:`list_models`) or
    ``"package.module:factory"``. ``kwargs`` are the model's own options
    (e.g. ``depth=110`` for ``preresnet``). Raises :class:`UserError` for an
    unknown name, a failed import, an argument the factory does not take, a bad
    value, or a user factory that does not return an ``nn.Module``.
    """
    if not isinstance(name, str):
        got = f"a {type(name).__name__} instance" if isinstance(name, nn.Module) else repr(name)
        raise UserError(f"model must be a registered name or 'package.module:factory' (a run rebuilds its network "
                        f"from the name); got {got}: register a factory that builds it with "
                        f"landscape.models.register_model")
    if ":" in name:
        factory = _import_factory(name)
    elif name in MODELS:
        factory = MODELS[name]
    else:
        cased = [m for m in MODELS if m.lower() == name.lower().replace("-", "_")]  # the papers' VGG16BN
        hint = f"did you mean {cased[0]!r}? " if cased else ""
        raise UserError(f"unknown model {name!r}; {hint}choose one of: {', '.join(list_models())}")

    num_classes = simple.check_int(name, "num_classes", num_classes, 1)
    input_shape = _check_input_shape(name, input_shape)
    signature = _signature(factory)
    _check_kwargs(name, signature, kwargs)

    data = {"num_classes": num_classes, "input_shape": input_shape}
    if ":" in name and signature is not None:
        # A user factory may not need the data arguments; pass only what it accepts.
        data = {k: v for k, v in data.items() if _accepts(signature, k)}
    with _float32_default():  # networks are float32, whatever default the user's session set
        try:
            model = factory(**data, **kwargs)
        except UserError:
            raise
        except Exception as e:  # a bad option value fails deep inside the factory or torch, in any way
            shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise UserError(f"model {name!r} could not be built{f' with {shown}' if shown else ''}: "
                            f"{type(e).__name__}{': ' + first_line(e) if str(e).strip() else ''}") from e
        if not isinstance(model, nn.Module):
            raise UserError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
        return remember_built(materialize(unwrap(model), input_shape, f"model {name!r}"))


def unsaved_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s buffers its state dict leaves out (``persistent=False``): a
    checkpoint does not hold them, so a loaded network has them as its
    factory builds them."""
    kept = set(model.state_dict())
    return {n: b for n, b in model.named_buffers() if n not in kept and not is_lazy(b)}


def _comparable(buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Those of ``buffers`` with values to compare: dense, not on the meta device."""
    return {n: b for n, b in buffers.items() if b.layout == torch.strided and not b.is_meta}


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The CPU's torch generator, NumPy's and Python's seeded with ``seed``
    inside (``seed_everything(gpus=False)``: a training run's GPU draws, its
    dropout, must follow its own seed, not this one), all three as they were
    after."""
    import random

    import numpy as np

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            seed_everything(seed, gpus=False)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def refuse_random_unsaved(name: str, model: nn.Module, build: Factory) -> None:
    """:class:`UserError` when a buffer the state dict leaves out is drawn at
    random as the network is built: no checkpoint holds it, so every load would
    draw another one and a saved network could never be rebuilt (a fixed
    random projection registered ``persistent=False``). For a run about to
    train a new network (``train``; ``swa`` / ``fge`` without a starting
    checkpoint), before any training: loading checks a checkpoint's record
    instead (:func:`check_unsaved`), which builds nothing more. Told by
    building the network again, uninitialised memory filled (``torch.empty``
    then gives NaN, or an integer's largest value, every time): a buffer that
    differs from the first build's is built twice under :data:`_CHECK_SEED`
    and once under another seed. Different under one seed, it is drawn from a
    generator the seeds do not reach (an unseeded ``np.random.default_rng()``,
    one made once for the module, the clock); the same under one seed and
    different under another, from a seeded one; the same under both, it is
    uninitialised memory (``torch.empty``), which no load can depend on, and
    is left alone. The first two are refused. The extra builds draw from
    generators of their own; networks without such buffers are built once,
    and a factory that fails when called again is left as it is (nothing is
    told)."""
    first = _comparable(unsaved_buffers(model))
    if not first:
        return
    builds = []
    for seed in (_CHECK_SEED, _CHECK_SEED, _CHECK_SEED + 1):
        try:
            with _float32_default(), _seeded(seed), _memory_filled():
                builds.append(_comparable(unsaved_buffers(build())))
        except Exception:  # a factory that cannot be called twice (a one-shot resource, memory): cannot tell
            return
        if len(builds) == 1:
            differ = [n for n, b in first.items() if not _same(b, builds[0].get(n))]
            if not differ:
                return
    unseeded = [n for n in differ if n in builds[0] and not _same(builds[0][n], builds[1].get(n))]
    seeded = [n for n in differ if n in builds[0] and n not in unseeded and not _same(builds[0][n], builds[2].get(n))]
    _keep_built(model, [n for n in built_record(model) or {} if n not in differ or n in unseeded + seeded])
    advice = ("register it as persistent (register_buffer(..., persistent=True)) or draw it from a torch.Generator "
              "made inside the factory with a fixed seed")
    if unseeded:
        raise UserError(f"model {name!r}: its buffer {unseeded[0]!r} takes other values every time the network is "
                        f"built, whatever the seeds (drawn from an unseeded np.random.default_rng(), a generator made "
                        f"once for the module, or the clock?), but is registered with persistent=False, so no "
                        f"checkpoint holds it and every load would build another: {advice}")
    if seeded:
        raise UserError(f"model {name!r}: its buffer {seeded[0]!r} is drawn at random (or computed from the initial "
                        f"weights) when the network is built but registered with persistent=False, so no checkpoint "
                        f"holds it and every load would build another: {advice}")


@contextmanager
def _memory_filled() -> Iterator[None]:
    """Inside, memory torch allocates without initialising (``torch.empty``) is filled (NaN; an integer's
    largest value), so that such a buffer is the same in every build; the settings as they were after.
    (torch fills it only with its deterministic algorithms on: on, warning only, and those warnings kept quiet.)"""
    import warnings

    import torch.utils.deterministic as deterministic

    was = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           deterministic.fill_uninitialized_memory)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.use_deterministic_algorithms(True, warn_only=True)
            deterministic.fill_uninitialized_memory = True
            yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        deterministic.fill_uninitialized_memory = was[2]


_CHECK_SEED = 0x5EED_C0DE  # not a seed a run is likely given: the first build's draw is another


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether ``b`` holds ``a``'s values (NaN equal to NaN)."""
    if b is None or a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.detach().cpu(), b.detach().cpu()
    return bool(torch.equal(a, b)) if not a.is_floating_point() and not a.is_complex() else bool(
        torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)))


UNSAVED_KEY = "unsaved_buffers"  # a checkpoint's record of its network's buffers the state dict leaves out
_BUILT = "_landscape_built_buffers"  # a built network's attribute: unsaved_record as its factory built it


def remember_built(model: nn.Module) -> nn.Module:
    """Keep on ``model`` (an attribute, which a deepcopy keeps too) the
    :func:`unsaved_record` of its buffers as built, for every checkpoint saved
    from it and for :func:`check_unsaved`: a cache a forward fills later
    (a rotary table grown to the inputs' length) is compared as the factory
    builds it, not as training left it."""
    record = unsaved_record(model)
    if record:
        try:
            setattr(model, _BUILT, record)
        except (AttributeError, TypeError):  # a module that takes no new attributes: its buffers go unrecorded
            pass
    return model


def _keep_built(model: nn.Module, names) -> None:
    """Keep only ``names`` in ``model``'s built record: a buffer filled some
    other way than its factory's seeds (``torch.empty``'s uninitialised
    memory, told by :func:`refuse_random_unsaved`), or one the checkpoint a
    network was loaded from did not record, is not compared, and a checkpoint
    saved from the network does not record it either."""
    record = built_record(model)
    if record is not None:
        setattr(model, _BUILT, {n: record[n] for n in names if n in record})


def built_record(model: nn.Module) -> dict[str, dict] | None:
    """The record :func:`remember_built` kept on ``model``; None for a network
    built elsewhere (given by a caller) or without such buffers."""
    record = getattr(model, _BUILT, None)
    return record if isinstance(record, dict) else None


def unsaved_record(model: nn.Module) -> dict[str, dict]:
    """What a checkpoint keeps of ``model``'s buffers that its state dict
    leaves out (:func:`unsaved_buffers`), for :func:`check_unsaved`: each
    one's shape, dtype and :func:`_sums`, not its values (a big random
    projection would double the file)."""
    return {n: {"shape": list(b.shape), "dtype": str(b.dtype).removeprefix("torch."), "sums": _sums(b)}
            for n, b in _comparable(unsaved_buffers(model)).items()}


_SCALE = 2.0 ** -60  # exact, and far from float64's overflow for any float buffer (finfo(float64).min masks)


def _sums(b: torch.Tensor, chunk: int = 1 << 20) -> list:
    """For integer and bool buffers, the SHA-256 of their bytes (exact, and
    free of the summation order, which the number of threads changes). For
    floating ones: counts of NaN, +inf and -inf, then the sum, the sum of
    magnitudes and a sum weighted by fixed weights in -0.5..0.5 (the
    fractional parts of i times the golden ratio: the same on every machine
    and torch version) of the finite values times 2^-60, in float64 (complex
    as its real and imaginary parts). The weighted sum tells a permutation or
    another draw of the same distribution: for n values drawn again it moves
    by about sqrt(n / 12) times their scale, against a sum of magnitudes near
    n times it."""
    import hashlib

    x = b.detach().cpu()
    x = (torch.view_as_real(x) if x.is_complex() else x).reshape(-1)
    if not x.is_floating_point():
        return [hashlib.sha256(x.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()]
    sums = [0.0] * 6
    for start in range(0, x.numel(), chunk):
        part = x[start:start + chunk].to(torch.float64)
        finite = torch.isfinite(part)
        sums[0] += float(torch.isnan(part).sum())
        sums[1] += float((part == float("inf")).sum())
        sums[2] += float((part == float("-inf")).sum())
        part = torch.where(finite, part * _SCALE, torch.zeros((), dtype=torch.float64))
        weights = torch.arange(start, start + part.numel(), dtype=torch.float64).mul_(0.6180339887498949).frac_()
        sums[3] += float(part.sum())
        sums[4] += float(part.abs().sum())
        sums[5] += float(part.dot(weights.sub_(0.5)))
    return sums


def _agree(now: dict, then: dict) -> bool:
    """Whether two :func:`unsaved_record` entries are one buffer built again:
    the same shape and dtype; for integers the same bytes; for floats the
    same counts of non-finite values, and sums within 1e-5 (or the dtype's
    epsilon, if larger) of the sum of magnitudes. A deterministic buffer
    computed on another CPU may differ in its last bits; one drawn again
    differs by far more."""
    if now["shape"] != list(then.get("shape", ())) or now["dtype"] != then.get("dtype"):
        return False
    a, b = now["sums"], list(then.get("sums", ()))
    if len(b) != len(a) or a[:-3] != b[:-3] or len(a) == 1:  # the digest, or the counts
        return len(a) == len(b) and a == b
    dtype = getattr(torch, now["dtype"], None)
    eps = torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) and (dtype.is_floating_point or dtype.is_complex) \
        else 0.0
    tol = max(1e-5, eps) * max(abs(a[4]), abs(b[4]))
    return all(x == y or abs(x - y) <= tol for x, y in zip(a[3:], b[3:]))


def check_unsaved(model: nn.Module, ckpts, *, name: str = "", rebuild: Factory | None = None) -> None:
    """:class:`UserError` when a buffer of ``model`` that its state dict leaves
    out was not built as one of ``ckpts``
    (:class:`~landscape.checkpoint.Checkpoint`) records it was when its
    network was built (:func:`remember_built`): built again, the network is
    not the one that was trained (a buffer drawn at random, from a generator
    shared between builds, or computed from the initial weights). Only for a
    network built here (a caller's own network is theirs). Where a checkpoint
    has no record (a foreign one, one saved before records were kept) and
    ``rebuild`` is given, the network is built again to tell a random draw
    (:func:`refuse_random_unsaved`)."""
    now = built_record(model)
    if not now:
        return
    unrecorded = False
    for ck in ckpts:
        record = (getattr(ck, "extra", None) or {}).get(UNSAVED_KEY)
        if not isinstance(record, dict):
            unrecorded = True
            continue
        _keep_built(model, [n for n in now if n in record])  # one the record leaves out (torch.empty's) is not told
        for buffer, then in record.items():
            if buffer in now and isinstance(then, dict) and not _agree(now[buffer], then):
                raise UserError(f"{ck.path}: the network's buffer {buffer!r} is registered with persistent=False, "
                                f"so no checkpoint holds it, and built again it holds other values than when the "
                                f"network saved there was built (drawn at random, from a generator shared between "
                                f"builds, or computed from the initial weights): it would not be the network "
                                f"trained; register it as persistent (register_buffer(..., persistent=True)) or "
                                f"build it the same way every time")
    if unrecorded and rebuild is not None:
        refuse_random_unsaved(name, model, rebuild)


@contextmanager
def _float32_default() -> Iterator[None]:
    """torch's default dtype float32 within, the caller's put back after."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def has_lazy(model: nn.Module) -> bool:
    """Whether ``model`` has lazy layers (``nn.LazyLinear`` ...) whose shapes are not set yet."""
    return any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules())


def materialize(model: nn.Module, input_shape: tuple[int, ...] | None, source: object) -> nn.Module:
    """``model`` with its lazy layers' shapes set by one eval-mode forward of two
    zero inputs of ``input_shape`` (modes kept, no graph): every later step,
    from a checkpoint's shape check to a batch of points, needs the shapes.
    A model without lazy layers is returned as it is; one the toolkit cannot
    use is refused (:func:`~landscape.weights.refuse_unusable`)."""
    refuse_unusable(model, source)
    if not has_lazy(model):
        return model
    if input_shape is None:
        raise UserError(f"{source} has lazy layers whose shapes are not set yet, and the input shape is unknown: "
                        f"run one forward on an input batch first")
    modes = {m: m.training for m in model.modules()}
    where = next((t.device for t in (*model.parameters(), *model.buffers()) if not is_lazy(t)),
                 torch.device("cpu"))
    try:
        # not inference mode, even inside a caller's: weights made there could never be trained
        with torch.inference_mode(False), torch.no_grad():
            model.eval()(torch.zeros(2, *input_shape, device=where, dtype=torch.float32))  # inputs are float32
    except Exception as e:  # a user's network fails in any way
        raise UserError(f"{source} has lazy layers, and a forward of zeros of shape {tuple(input_shape)} to set "
                        f"their shapes failed: {type(e).__name__}: {first_line(e)}") from e
    finally:
        for m, mode in modes.items():
            m.training = mode
    return model


def model_options(spec: dict) -> dict:
    """A stored ``{"name", "kwargs"}``'s own options: its kwargs without the
    number of classes and the input shape, which come from the data."""
    return {k: v for k, v in spec["kwargs"].items() if k not in _DATA_ARGS}


def model_spec(name: str, num_classes: int, input_shape: tuple[int, ...], /, **kwargs: object) -> dict:
    """``{"name", "kwargs"}`` as checkpoints store it: enough for :func:`from_spec`."""
    for key in ("num_classes", "input_shape"):
        if key in kwargs:
            raise UserError(f"--model-kwargs {key}=... is not an option: {key} comes from the dataset")
    return {"name": name, "kwargs": {**kwargs, "num_classes": num_classes, "input_shape": list(input_shape)}}


TRUST_ENV = "LANDSCAPE_TRUSTED_FACTORIES"


def from_spec(spec: dict, *, trusted: bool = False, source: object = "a checkpoint") -> nn.Module:
    """Build the network a checkpoint's ``{"name", "kwargs"}`` entry describes.

    A stored name is data: it may name a registered model, but a
    ``"module:factory"`` is imported and called only when ``trusted`` (the
    caller built the spec from the user's own ``--model``) or when its module
    is listed in the environment variable ``LANDSCAPE_TRUSTED_FACTORIES``
    (comma-separated module names or prefixes): otherwise a crafted
    checkpoint could name ``os:system`` and run a command on loading."""
    name = spec["name"]
    if isinstance(name, str) and ":" in name and not trusted:
        module = name.partition(":")[0]
        allowed = [m.strip() for m in os.environ.get(TRUST_ENV, "").split(",") if m.strip()]
        if not any(module == m or module.startswith(m + ".") for m in allowed):
            raise UserError(f"{source} names the model factory '{name}'; a checkpoint may name only a registered "
                            f"model, so it is not imported: if you trust it, name it yourself (--model {name}; "
                            f"model= in Python) or set {TRUST_ENV}={module}")
    if not buildable(name):
        raise UserError(f"{source} holds a model named {name!r}, which is not registered in this process (a name "
                        f"registered from Python is known only where it was registered): register it before loading, "
                        f"or name its factory with --model package.module:factory")
    kwargs = dict(spec["kwargs"])
    kwargs["input_shape"] = tuple(kwargs["input_shape"])
    return create_model(name, **kwargs)


def check_spec_fits(spec: dict, num_classes: int, input_shape: tuple[int, ...], source: object,
                    dataset: str = "the dataset") -> None:
    """:class:`UserError` when a stored network was built for other data."""
    shape, classes = tuple(spec["kwargs"]["input_shape"]), spec["kwargs"]["num_classes"]
    if shape != tuple(input_shape) or classes != num_classes:
        raise UserError(f"{source} was built for input {shape} and {classes} classes, but {dataset} has "
                        f"{tuple(input_shape)} and {num_classes}")


def _check_input_shape(name: str, input_shape: object) -> tuple[int, ...]:
    try:
        # bool passes operator.index, but True is no dimension size.
        shape = tuple(operator.index(s) for s in input_shape if not isinstance(s, bool))  # type: ignore[union-attr]
        if len(shape) != len(input_shape):  # type: ignore[arg-type]
            shape = ()
    except TypeError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise UserError(f"model {name!r} needs input_shape to be a tuple of positive integers; got {input_shape!r}")
    return shape


def _import_factory(name: str) -> Factory:
    """Resolve ``"package.module:attr.path"`` to the callable it names."""
    module_name, _, attr_path = name.partition(":")
    if not module_name or not attr_path:
        raise UserError(f"model {name!r} is not of the form package.module:factory")
    try:
        obj = _import_user_module(module_name)
    except Exception as exc:  # a user's module may fail in any way while importing
        raise UserError(f"cannot import module {module_name!r} for model {name!r} (it must be importable: in "
                        f"the current folder or on PYTHONPATH): {exc}") from exc
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise UserError(f"module {module_name!r} has no attribute {attr_path!r} (model {name!r})")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise UserError(f"model {name!r} names a {type(obj).__name__}, not a callable factory")
    return obj


def _import_user_module(module_name: str):
    """``importlib.import_module``, with the current folder searched as
    ``python -m`` would: the ``landscape`` script's own folder, not the
    user's, is first on ``sys.path``, so ``--model mymodels:net`` next to
    ``mymodels.py`` would otherwise not be found."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        here = os.getcwd()
        if e.name is None or module_name.partition(".")[0] != e.name.partition(".")[0] or here in sys.path:
            raise  # the module itself was found; something it imports was not
        sys.path.append(here)
        return importlib.import_module(module_name)


def _signature(factory: Factory) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None


def _accepts(signature: inspect.Signature, arg: str) -> bool:
    """Whether ``arg`` can be passed by keyword to a callable with ``signature``."""
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return True
        if p.name == arg and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return True
    return False


def _check_kwargs(name: str, signature: inspect.Signature | None, kwargs: dict[str, object]) -> None:
    """Raise :class:`UserError` for a keyword the factory does not take, or a required one missing."""
    if signature is None:
        return
    params = signature.parameters.values()
    options = [
        p for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _DATA_ARGS
    ]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        names = [p.name for p in options]
        for key in kwargs:
            if key not in names:
                takes = f"it takes: {', '.join(names)}" if names else "it takes no arguments"
                raise UserError(f"model {name!r} takes no argument {key!r}; {takes}")
    for p in options:
        if p.default is p.empty and p.name not in kwargs:
            raise UserError(f"model {name!r} needs argument {p.name!r}")


register_model("mlp")(simple.mlp)
register_model("convnet")(simple.convnet)
register_model("lenet5")(simple.lenet5)
register_model("vgg16")(vgg.vgg16)
register_model("vgg16bn")(vgg.vgg16bn)
register_model("vgg19")(vgg.vgg19)
register_model("vgg19bn")(vgg.vgg19bn)
register_model("vgg16bn_dnnmc")(vgg.vgg16bn_dnnmc)
register_model("vgg19bn_dnnmc")(vgg.vgg19bn_dnnmc)
register_model("preresnet")(preresnet.preresnet)
register_model("preresnet20")(preresnet.preresnet20)
register_model("preresnet56")(preresnet.preresnet56)
register_model("preresnet110")(preresnet.preresnet110)
register_model("preresnet164")(preresnet.preresnet164)
register_model("wrn28x10")(wide_resnet.wrn28x10)
