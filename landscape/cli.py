"""The `landscape` command line: one parser, subcommands, shared option groups.

Each subcommand parses its options, calls one library function and reports.
User errors (bad names, files, values) print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import ast
import errno
import os
import re
import statistics
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from landscape.errors import (UserError, first_line, is_out_of_memory, launch_rank, on_terminate, shell_word,
                              stop_words, world_size)

PROG = "landscape"


class _Help(argparse.HelpFormatter):
    """Every option with a default shows it, unless its help already says."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None or default is False
                or default is argparse.SUPPRESS or (isinstance(default, (list, tuple)) and not default)):
            return text
        if isinstance(default, (list, tuple)):
            default = (" " if isinstance(default, list) else ",").join(str(v) for v in default)
        return f"{text}{' ' if text else ''}(default: {str(default).replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not a usage dump,
    and every default is shown in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def _print_message(self, message: str, file: Any = None) -> None:
        if launch_rank(strict=False) == 0:  # --help and --version: under torchrun rank 0 prints them, once
            super()._print_message(message, file)

    def error(self, message: str) -> None:  # type: ignore[override]
        if getattr(self, "labels_given", False) and "required: RESULT_DIR" in message:  # --labels took the folders
            message += " (give --labels after the result folders: it takes every word after it)"
        if launch_rank(strict=False) == 0:  # under torchrun every rank parses the same words: rank 0 says it
            print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _cell(value: float, width: int, decimals: int) -> str:
    """A right-aligned table cell: fixed-point when it fits the column, else
    in scientific notation (a loss of 1e25 at a far point keeps the table's
    columns in place)."""
    text = f"{value:>{width}.{decimals}f}"
    return text if len(text) <= width else f"{value:>{width}.{max(1, min(decimals, width - 8))}e}"


def _coord(value: float) -> str:
    """A plane coordinate for the console: two decimals, in powers of ten from a million (--span 1e25)."""
    return f"{value:.2f}" if abs(value) < 1e6 else f"{value:.3g}"


def _fixed(value: float, decimals: int) -> str:
    from landscape.progress import fixed

    return fixed(value, decimals)


# ----------------------------------------------------------- value parsers
def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"bad key in {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key, parsed


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


# ------------------------------------------------------ shared option groups
def add_data_args(p: argparse.ArgumentParser, *, inherit: bool = False, title: str | None = None) -> None:
    """Dataset options. With ``inherit``, every default is None: the settings
    the input checkpoints were trained with are used unless given (``title``
    says otherwise where they are not)."""
    g = p.add_argument_group(title or ("data" + (" (default: what the input checkpoint was trained on)"
                                                 if inherit else "")))

    def d(value):
        return None if inherit else value

    g.add_argument("--dataset", default=d("digits"),
                   help="digits (embedded), mnist, fashion-mnist, cifar10, cifar100, npz, synthetic")
    g.add_argument("--data-path", default=None,
                   help="folder (mnist, cifar) or .npz file holding the dataset")
    g.add_argument("--val-size", type=int, default=d(0),
                   help="carve this many training images out as a validation set, used instead of the test set")
    g.add_argument("--data-seed", type=int, default=d(0),
                   help="seed of the validation split and of synthetic data (keep it equal across endpoints)")
    g.add_argument("--synthetic-shape", type=_int_tuple, default=d((3, 32, 32)), metavar="C,H,W",
                   help="input shape of --dataset synthetic")
    g.add_argument("--synthetic-classes", type=int, default=d(10), help="classes of --dataset synthetic")
    g.add_argument("--synthetic-size", type=_int_tuple, default=d((5000, 1000)), metavar="TRAIN,TEST",
                   help="train and test sizes of --dataset synthetic")
    g.add_argument("--data-normalization", default=d("standard"), metavar="NAME|MEAN/STD",
                   help="input normalisation: standard (MNIST's and CIFAR's usual constants, other data by its "
                        "training split's statistics), resnet or vgg (the papers' code's CIFAR constants, its "
                        "--transform ResNet and VGG; imagenet is vgg), or MEAN/STD such as "
                        "0.5,0.5,0.5/0.25,0.25,0.25 (a negative mean after an =: --data-normalization=-0.5/0.25)")


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The data options given on the command line (those not None)."""
    values = {
        "dataset": args.dataset, "data_path": args.data_path, "val_size": args.val_size,
        "data_seed": args.data_seed, "synthetic_shape": args.synthetic_shape,
        "synthetic_classes": args.synthetic_classes, "synthetic_sizes": args.synthetic_size,
        "data_normalization": args.data_normalization,
    }
    return {k: (tuple(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None}


def add_model_args(p: argparse.ArgumentParser, *, default: str | None = "convnet") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default,
                   help="a registered model (see 'landscape models') or package.module:factory"
                        + ("" if default else "; needed only for foreign checkpoints"))
    g.add_argument("--model-kwargs", type=_kv, nargs="*", default=[], metavar="K=V",
                   help="constructor options, e.g. width=64 or depth=56")


def add_curve_model_arg(p: argparse.ArgumentParser) -> None:
    """--model for commands whose checkpoint holds its own network: it can only name that network."""
    p.add_argument_group("model").add_argument(
        "--model", help="the network the checkpoint holds, named to trust a package.module:factory it names")


def add_optim_args(p: argparse.ArgumentParser, *, epochs: int = 20, lr: float | None = 0.05, wd: float = 5e-4,
                   schedule: bool = True, epochs_help: str = "passes over the training set") -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    if lr is not None:
        g.add_argument("--lr", type=float, default=lr, help="initial learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--wd", type=float, default=wd, help="weight decay")
    g.add_argument("--batch-size", type=int, default=128, help="training minibatch size")
    if schedule:
        g.add_argument("--schedule", default="paper",
                       help="paper (constant, then linear decay to 1%% from 50%% to 90%% of training), cosine, constant")


def add_curve_fit_args(p: argparse.ArgumentParser, start: str, end: str, what: str) -> argparse._ArgumentGroup:
    """The curve options of ``connect`` and ``vi-connect``; returns their group."""
    g = p.add_argument_group("curve")
    g.add_argument("--start", required=True, type=user_path, help=start)
    g.add_argument("--end", required=True, type=user_path, help=end)
    g.add_argument("--curve", default="bezier", help="bezier or polychain")
    g.add_argument("--bends", type=int, default=1, help="number of free control points (default: 1)")
    g.add_argument("--free-start", action="store_true", help=f"train the first {what} too")
    g.add_argument("--free-end", action="store_true", help=f"train the second {what} too")
    g.add_argument("--objective", default="uniform", help="uniform (t ~ U(0,1), the papers') or arclength")
    g.add_argument("--t-samples", type=int, default=1, metavar="K", help="values of t per minibatch, evaluated together")
    return g


def add_run_args(p: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", required=out_required, type=user_path, metavar="DIR", help="folder for every file this run writes")
    g.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA; on CPU it helps only with AMX)")
    g.add_argument("--precision", dest="train_precision", choices=["fp32", "bf16"], default=None,
                   help="the evaluation commands' spelling: bf16 is --amp, fp32 (the default) is without it")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")
    g.add_argument("--save-every", type=int, default=0, metavar="N", help="keep a checkpoint every N epochs, and (train) the initial weights as checkpoint-000.pt "
                        "(0: only the last)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or log lines")


def add_stored_eval_args(p: argparse.ArgumentParser) -> None:
    """--out, --resume, the evaluation and data options and --model of a
    command that evaluates a checkpoint holding its own network (curve, swag)."""
    p.add_argument("--out", required=True, type=user_path, metavar="DIR", help="folder for the result files")
    p.add_argument("--resume", action="store_true", help="continue an interrupted evaluation in --out")
    add_eval_args(p)
    add_data_args(p, inherit=True)
    add_curve_model_arg(p)


def _stored_eval_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The options :func:`add_stored_eval_args` adds, as the evaluation functions take them."""
    return dict(wd=args.wd, batch_size=args.batch_size, bn_batches=args.bn_batches, bn_stats=args.bn_stats,
                points_per_pass=args.points_per_pass, precision=args.precision, device=args.device,
                resume=args.resume, progress=_progress(args), argv=_argv(args),
                model=args.model, **_data_overrides(args))


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--batch-size", type=int, default=1000, help="images per forward pass")
    g.add_argument("--bn-batches", type=int, default=None, metavar="N",
                   help="re-estimate batch norm from the first N training batches only (default: all)")
    g.add_argument("--bn-stats", default="auto", choices=["auto", "population", "batches"],
                   help="population: exact training-set statistics from one pass that also gives the train metrics; "
                        "batches: the papers' update_bn (per-batch statistics averaged, each batch weighted by its size, then a "
                        "second pass); "
                        "auto (default): population when the whole training set fits in one pass")
    g.add_argument("--points-per-pass", type=int, default=None, metavar="K",
                   help="points evaluated per pass over the data; a sweep stores its progress after each pass "
                        "(default: from free memory; at most 8 where points run one after another, as on the CPU)")
    g.add_argument("--wd", type=float, default=None,
                   help="weight decay in the reported train loss (default: as fitted; refused for a variational "
                        "posterior, whose prior regularises)")
    g.add_argument("--precision", default="fp32",
                   help="fp32 (default) or bf16: bf16 autocast, about 1.6-3x faster on CPUs with bf16 units (AMX, avx512_bf16), "
                        "several times slower where bf16 is emulated (AVX2 only); batch-norm statistics and sums "
                        "stay fp32")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--format", nargs="+", default=["png"], choices=["png", "pdf", "svg"], help="figure formats")
    g.add_argument("--quiet", action="store_true", help="no progress bar or log lines")


# ------------------------------------------------------------- subcommands
def _train_config(args: argparse.Namespace):
    from landscape.train import TrainConfig

    return TrainConfig(
        dataset=args.dataset,
        data_path=args.data_path,
        val_size=args.val_size,
        data_seed=args.data_seed,
        synthetic_shape=tuple(args.synthetic_shape),
        synthetic_classes=args.synthetic_classes,
        synthetic_sizes=tuple(args.synthetic_size),
        data_normalization=args.data_normalization,
        model=args.model,
        model_kwargs=dict(args.model_kwargs),
        epochs=args.epochs,
        lr=args.lr,
        momentum=args.momentum,
        wd=args.wd,
        batch_size=args.batch_size,
        schedule=args.schedule,
        seed=args.seed,
        save_every=args.save_every,
        device=args.device,
        amp=args.amp,
    )


def _progress(args: argparse.Namespace) -> bool | str:
    """Progress as every command shows it (:func:`landscape.progress.progress_mode`):
    a bar on a terminal, a line now and then ("log": an epoch, a pass of a sweep)
    where stderr is a file or a pipe, nothing with --quiet."""
    return False if args.quiet else True if sys.stderr.isatty() else "log"


def _format_run(name: str, s: dict[str, Any]) -> str:
    split = s.get("eval_split", "test")
    tag = "  [synthetic data]" if s.get("synthetic") else ""
    return (f"{name}: train loss {_fixed(s['train_loss'], 4)}  train error {s['train_error']:.2f}%  "
            f"{split} nll {_fixed(s['test_nll'], 4)}  {split} error {s['test_error']:.2f}%{tag}")


def cmd_train(args: argparse.Namespace) -> int:
    from landscape.sweep import is_main
    from landscape.train import train

    result = train(_train_config(args), args.out, resume=args.resume, progress=_progress(args), argv=_argv(args))
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    print(_format_run(str(args.out), result.summary))
    print(f"checkpoint: {args.out / 'model.pt'}")
    return 0


def _curve_fit_overrides(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The settings ``connect`` and ``vi-connect`` share (:func:`add_curve_fit_args`, data, model,
    optimisation, run), and ``extra``, as the fits take them."""
    overrides = dict(_data_overrides(args), curve=args.curve, bends=args.bends, free_start=args.free_start,
                     free_end=args.free_end, objective=args.objective, t_samples=args.t_samples,
                     epochs=args.epochs, lr=args.lr, momentum=args.momentum, batch_size=args.batch_size,
                     schedule=args.schedule, seed=args.seed, save_every=args.save_every, device=args.device,
                     amp=args.amp, model_kwargs=dict(args.model_kwargs), **extra)
    if args.model:
        overrides["model"] = args.model
    return overrides


def cmd_connect(args: argparse.Namespace) -> int:
    from landscape.curves.fit import fit_curve
    from landscape.sweep import is_main

    overrides = _curve_fit_overrides(args, wd=args.wd)
    result = fit_curve(args.start, args.end, args.out, resume=args.resume, progress=_progress(args), argv=_argv(args),
                       **overrides)
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    s = result.summary
    c, l = s["curve"], s["line"]
    split = s.get("eval_split", "test")
    print(f"{args.out}: {c['type']} curve with {c['bends']} bend(s), length {_fixed(c['length'], 3)} (line {_fixed(l['length'], 3)})")
    print(f"  at t = 1/2: curve train loss {_fixed(c['train_loss_at'][1], 4)}, {split} error {c['test_error_at'][1]:.2f}%;"
          f"  line train loss {_fixed(l['train_loss_at'][1], 4)}, {split} error {l['test_error_at'][1]:.2f}%")
    print(f"checkpoint: {args.out / 'model.pt'}   (evaluate it with: {_evaluate_hint(args.out)})")
    return 0


def _evaluate_hint(out: Path) -> str:
    """The ``curve`` command that evaluates a fitted curve; with ``--model`` when the network is the user's
    ``package.module:factory``, which a checkpoint's reader imports only when named."""
    from landscape.checkpoint import read_json

    name = (read_json(out / "config.json").get("model") or {}).get("name", "")
    named = f" --model {shell_word(name)}" if isinstance(name, str) and ":" in name else ""
    return f"landscape curve --ckpt {shell_word(out / 'model.pt')}{named} --out DIR"


def cmd_vi_connect(args: argparse.Namespace) -> int:
    from landscape.curves.posterior import fit_posterior_curve
    from landscape.sweep import is_main

    overrides = _curve_fit_overrides(args, temperature=args.temperature, optimizer=args.optimizer)
    result = fit_posterior_curve(args.start, args.end, args.out, resume=args.resume, progress=_progress(args),
                                 argv=_argv(args), **overrides)
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    s = result.summary
    c, l = s["curve"], s["line"]
    split = s.get("eval_split", "test")
    print(f"{args.out}: {c['type']} curve with {c['bends']} bend(s) between two {s['family']} posteriors, "
          f"length {_fixed(c['length'], 3)} (line {_fixed(l['length'], 3)}), temperature {s['temperature']:g}")
    print(f"  at t = 1/2, the network of the means: curve train loss {_fixed(c['mean_train_loss_at'][1], 4)}, "
          f"{split} error {c['mean_test_error_at'][1]:.2f}%;  line train loss {_fixed(l['mean_train_loss_at'][1], 4)}, "
          f"{split} error {l['mean_test_error_at'][1]:.2f}%")
    print(f"  KL / N at t = 1/2: curve {c['kl_per_sample_at'][1]:.4g}, line {l['kl_per_sample_at'][1]:.4g} "
          f"(ends {c['kl_per_sample_at'][0]:.4g} and {c['kl_per_sample_at'][2]:.4g})")
    print(f"checkpoint: {args.out / 'model.pt'}   (evaluate it with: {_evaluate_hint(args.out)})")
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from landscape.curves.evaluate import evaluate_curve
    from landscape.curves.fit import is_posterior_curve
    from landscape.checkpoint import load_checkpoint
    from landscape.sweep import is_main
    from landscape.plots.curve import draw_curve_figure

    ck = load_checkpoint(args.ckpt)  # read once: the evaluations take it as read
    if is_posterior_curve(ck):
        return _posterior_curve(args, ck)
    for flag, value in (("--samples", args.samples), ("--seed", args.seed)):
        if value is not None:
            raise UserError(f"{flag} applies to a curve between variational posteriors (vi-connect); "
                            f"{args.ckpt} joins two networks")
    points = args.points if args.points is not None else 61
    result = evaluate_curve(ck, args.out, points=points, **_stored_eval_kwargs(args))
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    s = result.summary
    split = s.get("eval_split", "test")
    nll = []
    if s.get("wd"):  # the weight-decay term may fall along a curve and hide a rise in NLL: both barriers
        for path in ("curve", "line"):  # a result of an earlier build has it among its metrics only
            s[path].setdefault("train_nll_barrier", s[path]["metrics"]["train_nll"]["barrier"])
        nll = [("train-NLL barrier", "train_nll_barrier", 4, 19)]
    _print_paths(s, [("train-loss barrier", "train_loss_barrier", 4, 20), *nll,
                     ("max train loss", "train_loss_max", 4, 16),
                     (f"{split}-err barrier %", "test_error_barrier", 2, 20),
                     (f"max {split} err %", "test_error_max", 2, 16),
                     (f"ensemble {split} err %", "ensemble_test_error", 2, 20)],
                 "test_error", f"{split} error", _ends_as_trained(ck.meta, s),
                 draw_curve_figure(args.out, tuple(args.format)))
    return 0


def _ends_as_trained(meta: dict[str, Any] | None, s: dict[str, Any]) -> str:
    """Where the endpoints' errors here (batch norm re-estimated on the
    training images as they are) differ from their own runs' summaries
    (the running statistics of training, of augmented batches where the
    run augmented), both: else a researcher reads the change as a lost
    checkpoint. The runs' figures as the fit stored them (``input_summaries``), else (a curve of an earlier
    build) as the summary.json beside each model.pt says; nothing when a run had none."""
    from landscape.data import data_differs
    from landscape.train import file_digest, run_reported

    ends = s["curve"]["metrics"]["test_error"]
    trained = ((meta or {}).get("train_config") or {})
    kept = (meta or {}).get("input_summaries")  # read when the curve was fitted: the runs may have moved since
    own = {}
    for key in ("start", "end"):
        if trained.get(f"free_{key}"):  # that end moved (--free-start/--free-end): its run's summary is not of it
            continue
        if isinstance(kept, dict):
            stored = kept.get(key)
        else:  # a curve of an earlier build: the runs' summaries where they are still the files it started from
            path = Path(str((meta or {}).get(key, "")))
            recorded = ((meta or {}).get("input_digests") or {}).get(key)
            moved = recorded is not None and path.is_file() and file_digest(path) != recorded  # another file there
            stored = None if moved else run_reported(path)
        if not isinstance(stored, dict) or stored.get("eval_split", "test") != s.get("eval_split", "test") or \
                "test_error" not in stored:
            return ""
        measured_on = stored.get("dataset")  # the run's own data: another normalisation is not comparable
        if isinstance(measured_on, dict) and isinstance(s.get("dataset"), dict) and data_differs(measured_on,
                                                                                                s["dataset"]):
            return ""
        own[key] = float(stored["test_error"])
    if all(abs(value - ends[key]) < 0.005 for key, value in own.items()):
        return ""
    norm = s.get("normalisation", "batch norm re-estimated")  # a summary of an earlier build: a network with it
    cause, stats = "", ""  # no batch norm: the difference is the buffers noted above the table
    if norm == "batch norm re-estimated":
        cause, stats = f"{norm}; ", ", with the statistics {} trained with,"
    elif norm.startswith("per batch"):
        cause = f"each batch normalised by its own statistics, batches of {norm.rsplit(' ', 1)[-1]}; "
    if len(own) == 1:
        (key, value), = own.items()
        return (f" ({cause}the {key}'s run's summary{stats.format('it')} says "
                f"{value:.2f}%; the {'end' if key == 'start' else 'start'} was trained with the curve)")
    return (f" ({cause}their runs' summaries{stats.format('they')} say "
            f"{own['start']:.2f}% and {own['end']:.2f}%)")


def _print_paths(s: dict[str, Any], columns: list[tuple[str, str, int, int]], ends_key: str, ends_label: str,
                 tail: str, figures: list[Path]) -> None:
    """A curve evaluation's table: one row per path (curve, line), its length
    and ``columns`` (header, summary key, digits, width); the endpoints' ``ends_key``."""
    print(f"{'path':<8}{'length':>9}" + "".join(f"{h:>{w}}" for h, _, _, w in columns))
    for name in ("curve", "line"):
        p = s[name]
        print(f"{name:<8}{_cell(p['length'], 9, 3)}" + "".join(_cell(p[k], w, d) for _, k, d, w in columns))
    ends = s["curve"]["metrics"][ends_key]
    print(f"endpoints' {ends_label}: {ends['start']:.2f}% and {ends['end']:.2f}%{tail}"
          + ("   [synthetic data]" if s.get("synthetic") else ""))
    for f in figures:
        print(f"figure: {f}")


def _posterior_curve(args: argparse.Namespace, ck) -> int:
    from landscape.curves.posterior import evaluate_posterior_curve
    from landscape.sweep import is_main
    from landscape.variational import WD_REFUSED
    from landscape.plots.posterior import draw_posterior_curve_figure

    kwargs = _stored_eval_kwargs(args)
    if kwargs.pop("wd") not in (None, 0.0):  # --wd 0 says what the ELBO is anyway
        raise UserError(WD_REFUSED)
    result = evaluate_posterior_curve(ck, args.out, points=args.points if args.points is not None else 21,
                                      samples=args.samples if args.samples is not None else 10,
                                      seed=args.seed if args.seed is not None else 0, **kwargs)
    if not is_main():
        return 0
    s = result.summary
    split = s.get("eval_split", "test")
    print(f"{s['family']} posteriors, {s['points']} points per path, {s['samples']} weight draws per point "
          f"(batch norm re-estimated for each)")
    _print_paths(s, [("-ELBO/N barrier", "neg_elbo_barrier", 4, 17),
                     ("E_q NLL barrier", "expected_train_nll_barrier", 4, 17),
                     (f"means {split}-err barrier", "mean_test_error_barrier", 2, 24),
                     (f"ensemble {split}-err barrier", "ensemble_test_error_barrier", 2, 27),
                     ("ensemble NLL barrier", "ensemble_test_nll_barrier", 4, 22)],
                 "ensemble_test_error", f"ensemble {split} error", "; -ELBO/N in nats per training sample, untempered",
                 draw_posterior_curve_figure(args.out, tuple(args.format)))
    return 0


def _marks(paths, model, space, device, first, overrides):
    """The marked networks' weights and labels; refused in one line where one was trained on other data than
    the plane's ``first`` checkpoint (its metrics, evaluated on the plane's data, would be another network's)
    unless the data options were given (``overrides``)."""
    from landscape.checkpoint import check_state_dict, load_checkpoint, require_network
    from landscape.inputs import check_same_data

    vectors, labels, ckpts = [], [], []
    for path in paths or []:
        ck = require_network(load_checkpoint(path))
        check_state_dict(model, ck.state_dict, str(ck.path), "the plane's model")
        vectors.append(space.flatten(ck.state_dict, source=str(path)).to(device))
        labels.append(Path(path).parent.name if Path(path).stem == "model" else Path(path).stem)
        ckpts.append(ck)
    if ckpts:
        check_same_data([first, *ckpts], overrides)
    return vectors, labels


def _eval_wd(args: argparse.Namespace, pts) -> float:
    """The weight decay of the reported train loss: --wd, else the first
    checkpoint's; a foreign checkpoint records none, and the user is told."""
    if args.wd is not None:  # checked where it is used (check_eval_options, evaluate_sharpness)
        return args.wd
    from landscape.sweep import is_main

    first = pts.checkpoints[0]
    recorded = [((ck.meta or {}).get("train_config") or {}).get("wd") for ck in pts.checkpoints]
    if recorded[0] is None:
        if is_main():
            print(f"note: {first.path} records no weight decay; train loss is reported without it (give --wd)",
                  file=sys.stderr)
    else:
        other = next(((ck, wd) for ck, wd in zip(pts.checkpoints, recorded) if wd is not None and wd != recorded[0]),
                     None)
        if other is not None and is_main():  # one train loss for all: the first's weight decay, said
            print(f"note: {other[0].path} was trained with weight decay {other[1]:g}, {first.path} with "
                  f"{recorded[0]:g}; train loss is reported with {pts.wd:g} at every point (give --wd to choose)",
                  file=sys.stderr)
    return pts.wd


def cmd_plane(args: argparse.Namespace) -> int:
    import torch

    from landscape.checkpoint import load_checkpoint
    from landscape.inputs import load_points, load_trajectory, refuse_same_weights, stored_data
    from landscape.plane import evaluate_plane, evaluate_random_plane, evaluate_trajectory_plane
    from landscape.sweep import is_main, process_device
    from landscape.weights import ParamSpace

    given = [flag for flag, value in (("--ckpt", args.ckpt), ("--points", args.points), ("--center", args.center),
                                      ("--trajectory", args.trajectory)) if value]
    if len(given) != 1:
        raise UserError("give one of --ckpt CURVE.pt, --points A.pt B.pt C.pt, --center A.pt or --trajectory RUN"
                        + (f" (got {' and '.join(given)})" if given else ""))
    if args.center and args.margin is not None:
        raise UserError("--margin: a random plane's grid spans [-span, span] around --center "
                        "(set --span, or --xrange / --yrange)")
    margin = 0.2 if args.margin is None else args.margin
    if not args.center:
        extra = [flag for flag, value in (("--normalize", args.normalize), ("--seed", args.seed),
                                          ("--span", args.span)) if value is not None]
        if extra:
            raise UserError(f"{', '.join(extra)} set{'s' if len(extra) == 1 else ''} the random plane around "
                            f"--center; {given[0]} spans its own plane")
    if args.ignore and not args.trajectory:
        raise UserError(f"--ignore sets what a trajectory's PCA leaves out (--trajectory); {given[0]} spans its own "
                        f"plane" + (" (filter normalisation already leaves biases and batch norm at the centre's)"
                                    if args.center else ""))
    device = process_device(args.device)
    path = path_label = None
    if args.ckpt:
        from landscape.curves.fit import load_curve

        loaded = load_curve(args.ckpt, device, args.model, dict(args.model_kwargs))
        data, wd = stored_data(loaded.meta, loaded.spec, args.ckpt, _data_overrides(args), device, wd=args.wd)
        model = loaded.model
        with torch.no_grad():
            W = loaded.curve.anchors().detach()
            if W.shape[0] < 3:
                raise UserError(f"{args.ckpt} is a curve without bends (a straight segment), which spans no plane; "
                                f"use --points A.pt B.pt C.pt with a third network")
            mid = round((W.shape[0] - 1) / 2)  # the bend nearest the middle
            points, labels = [W[0], W[-1], W[mid]], ["start", "end", f"bend {mid}" if W.shape[0] > 3 else "bend"]
            path = loaded.curve.points(torch.linspace(0, 1, 61, dtype=torch.float64, device=W.device))
        path_label = f"{loaded.curve.name} curve"
    else:
        load, files = ((load_trajectory, args.trajectory) if args.trajectory else
                       (load_points, [args.center]) if args.center else (load_points, args.points))
        pts = load(files, model=args.model, model_kwargs=dict(args.model_kwargs),
                   data_overrides=_data_overrides(args), device=device)
        model, points, labels, data, wd = pts.model, pts.vectors, pts.labels, pts.data, _eval_wd(args, pts)
        if args.points:
            if len(points) != 3:
                raise UserError(f"--points needs three checkpoints, got {len(points)}")
            refuse_same_weights(points, args.points, "a plane needs three different points (an SWA run's swa.pt "
                                                     "and swag.pt are one network)")
    if args.trajectory:
        evaluate, first = evaluate_trajectory_plane, points
        kind_options = {"labels": labels, "margin": margin, "ignore": args.ignore}
    elif args.center:
        evaluate, first = evaluate_random_plane, points[0]
        kind_options = {"normalize": args.normalize or "filter", "seed": 0 if args.seed is None else args.seed,
                        "span": args.span, "label": labels[0]}
    else:
        evaluate, first = evaluate_plane, points
        kind_options = {"labels": labels, "path": path, "path_label": path_label, "margin": margin}
    first_ckpt = load_checkpoint(args.ckpt) if args.ckpt else pts.checkpoints[-1 if args.trajectory else 0]
    marks, mark_labels = _marks(args.mark, model, ParamSpace.of(model), device, first_ckpt, _data_overrides(args))
    result = evaluate(model, first, data, args.out, **kind_options, marks=marks, mark_labels=mark_labels,
                      grid=args.grid, xrange=args.xrange, yrange=args.yrange, wd=wd,
                      batch_size=args.batch_size, bn_batches=args.bn_batches, bn_stats=args.bn_stats,
                      points_per_pass=args.points_per_pass, precision=args.precision, resume=args.resume,
                      progress=_progress(args),
                      config={"argv": _argv(args), "ckpt": str(args.ckpt) if args.ckpt else None,
                              "points": [str(p) for p in args.points or []],
                              "center": str(args.center) if args.center else None,
                              "trajectory": [str(ck.path) for ck in pts.checkpoints] if args.trajectory else [],
                              "mark": [str(p) for p in args.mark or []]})
    if not is_main():
        return 0
    from landscape.plots.plane import draw_plane_figures

    figures = draw_plane_figures(args.out, tuple(args.format))
    s = result.summary
    split = s.get("eval_split", "test")
    print(f"plane {s['grid']}x{s['grid']}: x in [{_coord(s['x_range'][0])}, {_coord(s['x_range'][1])}], "
          f"y in [{_coord(s['y_range'][0])}, {_coord(s['y_range'][1])}]")
    print(f"{'point':<12}{'x':>9}{'y':>9}{'train loss':>12}{f'{split} err %':>12}")
    for p in s["anchors"] + s["marks"]:
        off = p.get("distance_from_plane")
        print(f"{p['label']:<12}{_cell(p['x'], 9, 2)}{_cell(p['y'], 9, 2)}{_cell(p['train_loss'], 12, 4)}"
              f"{_cell(p['test_error'], 12, 2)}"
              + (f"   (itself; {off:.2f} from the plane)" if off is not None else ""))
    if s.get("plane") == "trajectory":
        far = max(s["trajectory_distance_from_plane"])
        print(f"trajectory: {s['checkpoints']} checkpoints from {s['start_label']}; PC1 and PC2 explain "
              f"{100 * s['explained_variance'][0]:.1f} % and {100 * s['explained_variance'][1]:.1f} % of its "
              f"variance; farthest checkpoint {far:.3g} from the plane")
    elif s.get("plane") == "random":
        print(f"random directions: {s['normalize']}, seed {s['seed']}; norms {s['direction_norms'][0]:.3g} and "
              f"{s['direction_norms'][1]:.3g}, cosine {s['direction_cosine']:.2g}")
    lo, points = s["grid_min"]["train_loss"], s["grid"] ** 2
    bad = s.get("non_finite_points") or 0  # none in a summary of an earlier build
    print((f"grid: train loss from {_fixed(lo['value'], 4)} (at {_coord(lo['x'])}, {_coord(lo['y'])}) to "
           f"{_fixed(s['grid_max']['train_loss'], 4)}" if lo is not None else
           "grid: the train loss is not a number at any point")
          + (f" ({bad} of {points} points not finite: the logits overflowed)" if 0 < bad else "")
          + ("   [synthetic data]" if s.get("synthetic") else ""))
    for f in figures:
        print(f"figure: {f}")
    return 0


def cmd_rays(args: argparse.Namespace) -> int:
    from landscape.inputs import load_points
    from landscape.rays import evaluate_rays
    from landscape.sweep import is_main, process_device

    device = process_device(args.device)
    paths = [args.center] + ([args.compare] if args.compare else [])
    pts = load_points(paths, model=args.model, model_kwargs=dict(args.model_kwargs),
                      data_overrides=_data_overrides(args), device=device)
    evaluate_rays(pts.model, pts.vectors, pts.data, args.out, labels=pts.labels,
                           paths=[str(p) for p in paths], directions=args.directions, distance=args.distance,
                           steps=args.steps, normalize=args.normalize, line=args.line, rise=args.rise,
                           seed=args.seed, wd=_eval_wd(args, pts), batch_size=args.batch_size,
                           bn_batches=args.bn_batches, bn_stats=args.bn_stats, points_per_pass=args.points_per_pass,
                           precision=args.precision, resume=args.resume,
                           progress=_progress(args),
                           config={"argv": _argv(args)})
    if not is_main():
        return 0
    return _report_rays(args)


def _report_rays(args: argparse.Namespace) -> int:
    from landscape.checkpoint import read_json
    from landscape.plots.rays import draw_rays_figures

    figures = draw_rays_figures(args.out, tuple(args.format))
    s = read_json(args.out / "summary.json")
    split = s.get("eval_split", "test")

    def fmt(v, spec, undefined=None):
        # A width beyond the rays' reach is "> distance"; a ratio of such widths is undefined.
        shown = undefined if undefined is not None else f"> {s['distance']:.3g}"
        return format(v, spec) if v is not None else shown.rjust(len(format(0.0, spec)))

    print(f"{s['directions']} {s['normalize']} rays to distance {s['distance']:.3g}, width at a train-loss rise "
          f"of {s['rise']:g}")
    nll = all("median_nll_width" in c for c in s["centers"])  # with wd > 0 (and not in older results)
    print(f"{'centre':<14}{'train loss':>12}{f'{split} err %':>12}{'median width':>14}{'full width':>12}"
          f"{'asymmetry':>11}" + (f"{'NLL width':>12}" if nll else ""))
    for c in s["centers"]:
        print(f"{c['label']:<14}{_cell(c['center_train_loss'], 12, 4)}{_cell(c['center_test_error'], 12, 2)}"
              f"{fmt(c['median_width'], '>14.3f')}{fmt(c['median_full_width'], '>12.3f')}"
              f"{fmt(c['median_asymmetry'], '>11.2f', 'n/a')}" + (fmt(c['median_nll_width'], '>12.3f') if nll else ""))
    if nll:
        cap = (f": along a unit ray it rises by about wd/2 t^2 whatever the network, so the train loss's widths stay "
               f"below sqrt(2 rise / wd) = {(2 * s['rise'] / s['wd']) ** 0.5:.3g}" if s["normalize"] == "gaussian"
               else "")
        print(f"(NLL width: the median width of the train NLL alone, without the weight-decay term{cap})")
    if "line" in s:
        ln = s["line"]
        if "between_train_loss_max" in ln:
            print(f"line through the centres: length {_fixed(ln['length'], 3)}; between them: max train loss "
                  f"{_fixed(ln['between_train_loss_max'], 4)}, barrier {_fixed(ln['train_loss_barrier'], 4)}")
        else:  # a result stored before the between-centres figures
            print(f"line through the centres: length {_fixed(ln['length'], 3)}, max train loss {_fixed(ln['train_loss_max'], 4)}")
        if ln.get("valley") is not None:  # none in results stored before it
            _print_valley(ln["valley"])
    for f in figures:
        print(f"figure: {f}")
    return 0


VALLEY_SAMPLES = 10  # samples further apart than a tenth of the valley: its figures are the sampling's too


def _print_valley(v: dict[str, Any]) -> None:
    """The line's valley (rays.line_valley) and where the two centres sit in it."""
    a, b = v["points"]
    span = " to ".join("beyond the line" if e is None else f"{e:.3g}" for e in (v["from"], v["to"]))
    if a["relative_offset"] is not None:
        where = (f"offsets from its middle in half-widths: {a['label']} {a['relative_offset']:+.2f}, {b['label']} "
                 f"{b['relative_offset']:+.2f}")
    elif v["from"] is not None and v["to"] is not None:
        where = "narrower than the line's steps"
    else:
        where = "it reaches past the line's end, so it has no middle"
    print(f"valley along the line from {a['label']} (0) to {b['label']} ({b['position']:.3g}) and beyond: "
          f"train loss within {v['rise']:g} of its minimum {_fixed(v['minimum_train_loss'], 4)} (at "
          f"{v['minimum_at']:.3g}) from {span}; {where}; train loss at the line's ends "
          f"{a['loss_beyond']:.4g} beyond {a['label']}, {b['loss_beyond']:.4g} beyond {b['label']}")
    gap, lo, hi = v.get("largest_gap"), v["from"], v["to"]
    if isinstance(gap, float) and lo is not None and hi is not None and gap > (hi - lo) / VALLEY_SAMPLES:
        print(f"note: the line's samples are up to {gap:.3g} apart across the valley, {hi - lo:.3g} wide: its edges, "
              f"the offsets and its lowest point move with the sampling; more --steps resolve it")


def cmd_plot(args: argparse.Namespace) -> int:
    dirs = args.result_dir
    for d in dirs:
        if d.is_file():
            raise UserError(f"{d} is a file; plot takes the result folder that holds it ({d.parent})")
        if not d.is_dir():
            raise UserError(f"{d}: no such result folder")
    if len(dirs) == 1 and args.labels is not None:
        raise UserError("--labels are for a figure comparing several result folders; one folder's figures are "
                        "labelled by its own results")
    elsewhere = len(dirs) == 1 and args.out is not None and args.out.resolve() != dirs[0].resolve()
    if elsewhere:
        _check_figures_folder(args.out, dirs[0])
    if len(dirs) > 1 and args.out is None:
        raise UserError("several result folders make one comparison figure: give --out FOLDER for it")
    from landscape.plots.style import (keep_unwritable_figures, set_figure_dpi, set_figure_style, set_figure_width,
                                       set_plane_cmap)

    d = dirs[0] if len(dirs) == 1 else ", ".join(map(str, dirs))
    _clear_stale_figures(dirs[0] if len(dirs) == 1 and not elsewhere else args.out)
    try:
        keep_unwritable_figures(False)  # asked to redraw: a folder that cannot be written is said so
        set_figure_width(args.width)
        set_figure_dpi(args.dpi)
        set_plane_cmap(args.cmap)
        set_figure_style(args.style)
        if len(dirs) == 1:
            try:
                written = _draw_stored(dirs[0], tuple(args.format), args.out if elsewhere else None)
            except OSError as e:
                writing = str(e.filename or "").endswith((".png", ".pdf", ".svg"))  # a figure, not a result read
                if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not writing:
                    raise
                # a shared, read-only results folder: say how to draw its figures elsewhere
                raise UserError(f"{e.filename}: {e.strerror or e}; {_elsewhere(dirs[0])}") from None
        else:
            from landscape.plots.compare import draw_comparison

            written = draw_comparison(dirs, args.out, args.labels, tuple(args.format))
    except UserError:
        raise
    except KeyError as e:  # a result file or summary without an entry the figure needs
        raise UserError(f"{d}: the stored results lack {e} (edited, or written by another version?); rerun the "
                        f"command that made them") from None
    except (TypeError, AttributeError, ValueError, IndexError) as e:  # entries of the wrong kind or length
        raise UserError(f"{d}: the stored results do not fit together ({type(e).__name__}: {first_line(e)[:160]}; "
                        f"edited, or damaged?); rerun the command that made them") from None
    finally:
        set_figure_width(None)  # the next figures of this process at their own size
        set_figure_dpi(None)
        set_plane_cmap(None)
        set_figure_style(None)
        keep_unwritable_figures(True)
    for f in written:
        print(f"figure: {f}")
    return 0


def _clear_stale_figures(folder: Path) -> None:
    """Remove the temporary files of figures that a ``plot`` killed while
    saving left in ``folder`` (ones older than :data:`checkpoint.FRESH_FIGURE_S`:
    a plot drawing there now writes newer ones). ``plot`` takes no lock: a
    command's run or resume there goes on meanwhile, and leaves a figure's
    fresh temporary file alone (:func:`checkpoint.clear_temporaries`)."""
    from landscape.checkpoint import clear_temporaries

    if folder is not None and folder.is_dir() and os.access(folder, os.W_OK):
        clear_temporaries(folder, figures_only=True)


def _elsewhere(d: Path) -> str:
    """How to draw the figures of ``d``, a folder that cannot be written, somewhere else: a result folder
    copied (not its checkpoints); a folder of comparison figures drawn again from the results its records
    name (a copy of it alone would not find them: they are named relative to it)."""
    from landscape.plots.compare import COMPARABLE, comparison_record

    commands = []
    for kind, spec in COMPARABLE.items():
        if (d / f"{spec.figure}.json").exists():
            try:
                folders, labels = comparison_record(d / f"{spec.figure}.json", kind)
            except UserError:
                continue
            commands.append(" ".join(["landscape plot", *(shell_word(os.path.relpath(f)) for f in folders),
                                      *(["--labels", *map(shell_word, labels)] if labels else []),
                                      "--out", "NEW_FOLDER"]))
    if commands:
        return f"draw the comparison in a folder you can write: {'; '.join(commands)}"
    return f"draw its figures in a folder you can write: landscape plot {shell_word(d)} --out NEW_FOLDER"


def _check_figures_folder(out: Path, d: Path) -> None:
    """One line where ``out`` cannot take the figures of ``d`` redrawn elsewhere: a file, or a folder holding a
    result of its own (its figures, by the same names, would be replaced)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the figures")
    held = [p.name for p in (out.iterdir() if out.is_dir() else ()) if p.name in ("config.json", "summary.json")
            or p.suffix == ".npz"]
    if held:
        raise UserError(f"--out {out} holds results of its own ({', '.join(sorted(held)[:3])}), whose figures "
                        f"{d}'s would replace; give a folder for figures alone")


def _draw_stored(d: Path, formats: tuple[str, ...], out: Path | None = None) -> list[Path]:
    """The figures of the result folder ``d``, drawn from its stored files, in ``d`` or (``out``) in
    another folder."""
    from landscape.checkpoint import RESULT_OWNERS, stored_config

    if out is not None:
        from landscape.plots.compare import redraw_comparisons
        from landscape.plots.style import figures_in

        results = [*RESULT_OWNERS, "summary.json", "config.json", "swa.pt"]
        if not any((d / name).exists() for name in results) and not any(d.glob("component-*/simplex.npz")):
            written = redraw_comparisons(d, formats, out)  # a comparison's folder: drawn again, with its record
            if written:
                return written
        with figures_in(d, out):
            return _draw_stored(d, formats)

    if (d / "posterior-curve.npz").exists():
        from landscape.plots.posterior import draw_posterior_curve_figure

        written = draw_posterior_curve_figure(d, formats)
    elif (d / "curve.npz").exists():
        from landscape.plots.curve import draw_curve_figure

        written = draw_curve_figure(d, formats)
    elif (d / "swag.npz").exists():
        from landscape.plots.swag import draw_swag_figure

        written = draw_swag_figure(d, formats)
    elif (d / "variational.npz").exists():
        from landscape.plots.swag import draw_variational_figure

        written = draw_variational_figure(d, formats)
    elif (d / "subspace.npz").exists():
        from landscape.plots.subspace import draw_subspace_figure

        written = draw_subspace_figure(d, formats)
    elif (d / "plane.npz").exists():
        from landscape.plots.plane import draw_plane_figures

        written = draw_plane_figures(d, formats)
    elif (d / "rays.npz").exists():
        from landscape.plots.rays import draw_rays_figures

        written = draw_rays_figures(d, formats)
    elif (d / "simplex.npz").exists() or (d / "component-1" / "simplex.npz").exists():
        from landscape.plots.simplex import draw_simplex_figure

        parts = [d] if (d / "simplex.npz").exists() else sorted(
            (c for c in d.glob("component-*") if (c / "simplex.npz").exists()), key=lambda c: int(c.name.split("-")[1]))
        written = [f for part in parts for f in draw_simplex_figure(part, formats)]  # ESPRO: one per component
        if not written:
            _note_no_face(d)
    elif (d / "sharpness.npz").exists():
        from landscape.plots.sharpness import draw_sharpness_figure

        written = draw_sharpness_figure(d, formats)
    elif (d / "swa.pt").exists() or (stored_config(d) or {}).get("command") == "swa":
        from landscape.plots.swa import draw_swa_figure

        if not (d / "summary.json").exists():  # a run stopped (before its first epoch too), or still going
            _refuse_unfinished_run(d, "SWA run")
        written = draw_swa_figure(d, formats)
    else:
        from landscape.sweep import refuse_unfinished
        from landscape.plots.compare import redraw_comparisons

        refuse_unfinished(d)
        written = redraw_comparisons(d, formats)  # a folder of comparison figures (plot A B ... --out d)
        if not written:
            raise UserError(f"{d}: no stored results to draw (expected curve.npz, plane.npz, rays.npz, sharpness.npz, "
                            f"simplex.npz, swag.npz, subspace.npz, variational.npz, an SWA run's metrics.jsonl, or "
                            f"the record of a comparison, curves.json, planes.json, averages.json)")
    return written


def _refuse_unfinished_run(d: Path, what: str) -> None:
    """One line for a run folder whose training has not finished (its last.pt
    without the summary.json a finished run writes): its figure would show
    the epochs so far as the run's, as unfinished sweeps are refused too."""
    from landscape.checkpoint import stored_config
    from landscape.sweep import refuse_stopped

    config = (stored_config(d) or {}).get("config")
    refuse_stopped(d, what, _done_so_far(d, config.get("epochs") if isinstance(config, dict) else None) or "")


def _average_overrides(args: argparse.Namespace) -> dict[str, Any]:
    o = dict(_data_overrides(args), epochs=args.epochs, momentum=args.momentum, wd=args.wd,
             batch_size=args.batch_size, seed=args.seed, save_every=args.save_every, device=args.device, amp=args.amp,
             model_kwargs=dict(args.model_kwargs), from_ckpt=str(args.from_ckpt) if args.from_ckpt else None)
    if args.model:
        o["model"] = args.model
    return o


def _print_metrics_row(name: str, m: dict[str, Any]) -> None:
    print(f"{name:<16}{_cell(m['train_loss'], 12, 4)}{_cell(m['train_error'], 13, 2)}{_cell(m['test_nll'], 10, 4)}"
          f"{_cell(m['test_error'], 12, 2)}")


def _metrics_header(split: str) -> None:
    print(f"{'':<16}{'train loss':>12}{'train err %':>13}{f'{split} nll':>10}{f'{split} err %':>12}")


def cmd_swa(args: argparse.Namespace) -> int:
    from landscape.averaging import run_swa
    from landscape.sweep import is_main

    if not args.from_ckpt and not args.model:
        args.model = "convnet"
    if args.lr is not None and args.swa_start == 0:
        raise UserError("--lr sets the rate before --swa-start; with --swa-start 0 the rate is --swa-lr "
                        "throughout (leave --lr out, or give --swa-start)")
    result = run_swa(None, args.out, resume=args.resume, progress=_progress(args), argv=_argv(args),
                     lr=0.05 if args.lr is None else args.lr, swa_start=args.swa_start, swa_lr=args.swa_lr, swa_lr_max=args.swa_lr_max,
                     swa_schedule=args.schedule, cycle=args.cycle, keep_snapshots=args.keep_snapshots,
                     swag_rank=args.swag_rank, eval_every=args.eval_every, **_average_overrides(args))
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    s = result.summary
    _metrics_header(s.get("eval_split", "test"))
    _print_metrics_row(f"SWA ({s['averaged']} avg)", s["swa"])
    _print_metrics_row("SGD (final)", s["sgd"])
    if "sgd_bn_recomputed" in s:
        _print_metrics_row("SGD, BN recomp.", s["sgd_bn_recomputed"])
    print(f"checkpoints: {args.out / 'swa.pt'} and {args.out / 'sgd.pt'}"
          f"   (compare their widths: landscape width --swa {shell_word(args.out / 'swa.pt')} --sgd "
          f"{shell_word(args.out / 'sgd.pt')} --out DIR)")
    if "swag" in s["files"]:
        print(f"SWAG moments ({s['averaged']} iterates, last {s['swag_deviations']} deviations): {args.out / 'swag.pt'}"
              f"   (its model average: landscape swag --ckpt {shell_word(args.out / 'swag.pt')} --out DIR)")
    from landscape.plots.swa import draw_swa_figure, has_swa_curve

    if has_swa_curve(args.out):  # --eval-every, now or in the part before a resume
        for f in draw_swa_figure(args.out, tuple(args.format)):
            print(f"figure: {f}")
    return 0


def cmd_swag(args: argparse.Namespace) -> int:
    from landscape.swag import evaluate_swag
    from landscape.sweep import is_main
    from landscape.plots.swag import draw_swag_figure

    result = evaluate_swag(args.ckpt, args.out, samples=args.samples, scale=args.scale, diag=args.diag,
                           seed=args.seed, **_stored_eval_kwargs(args))
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    figures = draw_swag_figure(args.out, tuple(args.format))
    s = result.summary
    kept = "" if s["method"] == "SWAG-Diagonal" else f", {s['rank']} deviations"  # the diagonal uses none
    _print_model_average(s, "SWA (the mean)", s["swa"], f"{s['method']}: {s['bma']['members']} samples, scale "
                         f"{s['scale']:g}{kept}", figures)
    return 0


def _print_model_average(s: dict[str, Any], centre: str, centre_metrics: dict[str, Any], how: str,
                         figures: list[Path], *, average: str = "bma", sample_label: str = "one sample, mean",
                         average_label: str = "model average", note: str | None = None) -> None:
    """The table of a model average of samples (swag, subspace, vi-eval): the
    centre, a single sample, the average (``s[average]``), then an optional
    note and the figures."""
    _metrics_header(s.get("eval_split", "test"))
    _print_metrics_row(centre, centre_metrics)
    m = s["samples"]
    _print_metrics_row(sample_label, {k: m[f"{k}_mean"] for k in ("train_loss", "train_error", "test_nll",
                                                                  "test_error")})
    b = s[average]
    print(f"{average_label:<16}{'':>12}{'':>13}{_cell(b['test_nll'], 10, 4)}{_cell(b['test_error'], 12, 2)}   ({how})"
          + ("   [synthetic data]" if s.get("synthetic") else ""))
    from landscape.metrics import ECE_BINS

    eces = [(label, value) for label, value in ((centre, centre_metrics.get("test_ece")),
                                                 (sample_label, m.get("test_ece_mean")), (average_label, b.get("test_ece")))
            if value is not None]  # none in results stored before calibration was measured
    if eces:
        print(f"{s.get('eval_split', 'test')} calibration (ECE %, {ECE_BINS} bins of the top-label confidence): "
              + "; ".join(f"{label} {value:.2f}" for label, value in eces))
    if note:
        print(note)
    for f in figures:
        print(f"figure: {f}")


def cmd_subspace(args: argparse.Namespace) -> int:
    from landscape.checkpoint import load_checkpoint
    from landscape.device import resolve_device
    from landscape.subspace import sample_subspace, swag_subspace
    from landscape.plots.subspace import draw_subspace_figure

    device = resolve_device(args.device)
    ck = load_checkpoint(args.ckpt)
    kind = ck.kind
    if kind != "curve" and "swag" not in ck.extra:
        raise UserError(f"{args.ckpt}: holds neither SWAG moments nor a curve; give swag.pt (from 'landscape swa "
                        f"--swag-rank K') or a curve (from 'landscape connect')")
    basis = args.basis if args.basis != "auto" else ("curve" if kind == "curve" else "pca")
    if kind == "curve":
        from landscape.curves import curve_subspace

        if basis != "curve":
            raise UserError(f"{args.ckpt}: a curve checkpoint gives the 'curve' subspace, not {basis!r} "
                            f"(pca and random need swag.pt from 'landscape swa --swag-rank K')")
        if args.rank not in (None, 2):
            raise UserError(f"--rank {args.rank}: the curve subspace is a plane (rank 2)")
        space = curve_subspace(ck, device, args.model)  # the checkpoint read once: swag.pt can be large
    else:
        space = swag_subspace(ck, basis, 2 if args.rank is None else args.rank, args.seed, device, args.model)
    kwargs = _stored_eval_kwargs(args)
    kwargs.pop("device"), kwargs.pop("model")
    vi = {name: getattr(args, name) for name in ("vi_epochs", "vi_lr", "vi_batch_size", "vi_init_std", "vi_family")
          if getattr(args, name) is not None}
    if vi and args.method != "vi":
        raise UserError(f"{', '.join('--' + name.replace('_', '-') for name in vi)}: for --method vi")
    result = sample_subspace(space, args.out, samples=args.samples, method=args.method, chains=args.chains,
                             burn_in=args.burn_in, max_depth=args.max_depth, mass=args.mass, **vi, grid=args.grid, temperature=args.temperature, prior_scale=args.prior_scale, seed=args.seed, **kwargs)
    figures = draw_subspace_figure(args.out, tuple(args.format))
    s = result.summary
    if s.get("method") == "vi" and s["vi"].get("family") == "realnvp":
        how = f"VI with a RealNVP flow, z sd {', '.join(f'{v:.3g}' for v in s['z_std'])}"
    elif s.get("method") == "vi":
        how = f"VI, sigma {', '.join(f'{v:.3g}' for v in s['vi']['sigma'])}"
    elif s.get("method") == "nuts":
        n = s["nuts"]
        how = (f"NUTS, {s['evaluations_per_sample']:.1f} gradient steps per sample ({n['gradient']}), mean accept "
               f"{n['accept_mean']:.2f}, {n['divergent']} divergent"
               + (f", inverse mass {', '.join(f'{v:.3g}' for v in n['inverse_mass'])}"
                  if n.get("mass") == "diag" else ""))
    else:
        how = f"ESS, {s['evaluations_per_sample']:.1f} evaluations per sample"
    _print_model_average(s, "centre", s["shift"], f"{s['basis']} subspace, rank {s['rank']}: {s['bma']['members']} "
                         f"samples, T {s['temperature']:g}, {how}", figures)
    return 0


def _ece_cell(m: dict[str, Any]) -> str:
    """The ECE column's cell: blank for a result stored before calibration was measured."""
    return _cell(m["test_ece"], 8, 2) if m.get("test_ece") is not None else f"{'':>8}"


def _ensemble_row(label: str, m: dict[str, Any]) -> str:
    """A row of the ensemble tables: test error, NLL and ECE (where measured)."""
    return f"{label:<16}{_cell(m['test_error'], 12, 2)}{_cell(m['test_nll'], 10, 4)}{_ece_cell(m)}"


def _print_ensemble(s: dict[str, Any]) -> None:
    split = s.get("eval_split", "test")
    print(f"{'member':<16}{f'{split} err %':>12}{f'{split} nll':>10}{'ECE %':>8}")
    for m in s["members"]:
        label = m.get("label") or f"snapshot-{m['snapshot']:03d}.pt"  # ensembles label members; fge / snapshots number them
        print(_ensemble_row(label, m).rstrip())
    e = s["ensemble"]
    print(f"{_ensemble_row('ensemble', e)}   ({e['members']} member{'s' if e['members'] != 1 else ''}; "
          f"mean member error {s['member_test_error_mean']:.2f}%)")
    r = s.get("partial_cycle_epochs")
    if r:
        gave = "one more snapshot" if s.get("partial_cycle_snapshot") else "no snapshot"
        print(f"note: --epochs {s['epochs']} is not a multiple of --cycle {s['cycle']}: the last {r} "
              f"epoch{'s' if r > 1 else ''} formed a partial cycle, which gave {gave}")


def cmd_vi(args: argparse.Namespace) -> int:
    from landscape.sweep import is_main
    from landscape.variational import run_variational

    if not args.from_ckpt and not args.model:
        args.model = "convnet"
    if args.hwa_start == 0 and (args.lr is not None or args.schedule is not None):
        raise UserError("--lr and --schedule set the rate before --hwa-start; with --hwa-start 0 the rate is HWA's "
                        "cyclical one throughout (leave them out, or give a later --hwa-start)")
    if args.hwa_start is not None and args.schedule is not None:
        raise UserError("--schedule applies without HWA; before --hwa-start the rate decays from --lr to --hwa-lr "
                        "as SWA's does (leave --schedule out)")
    overrides = _average_overrides(args)
    overrides.pop("wd")
    result = run_variational(None, args.out, resume=args.resume, progress=_progress(args), argv=_argv(args),
                             lr=0.01 if args.lr is None else args.lr, schedule=args.schedule or "paper", family=args.family, prior=args.prior,
                             prior_scale=args.prior_scale, temperature=args.temperature, init_alpha=args.init_alpha,
                             kl_warmup=args.kl_warmup, optimizer=args.optimizer, hwa_start=args.hwa_start,
                             hwa_lr=args.hwa_lr, hwa_lr_max=args.hwa_lr_max, cycle=args.cycle, **overrides)
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    s = result.summary
    split = s.get("eval_split", "test")
    print(f"{s['family']} posterior, {s['prior']} prior, {s['stochastic_parameters']} stochastic weights"
          + ("   [synthetic data]" if s.get("synthetic") else ""))
    print(f"{'deterministic':<16}{'train nll':>12}{'train err %':>13}{f'{split} nll':>10}{f'{split} err %':>12}"
          f"{'KL / N':>10}{'noise %':>9}")
    for key, name in (("vi", "VI (final)"), ("hwa", f"HWA ({s.get('hwa', {}).get('averaged')} avg)")):
        if key in s:
            m = s[key]
            share = m.get("noise_share")
            print(f"{name:<16}{_cell(m['train_nll'], 12, 4)}{_cell(m['train_error'], 13, 2)}"
                  f"{_cell(m['test_nll'], 10, 4)}"
                  f"{_cell(m['test_error'], 12, 2)}{_cell(m['kl_per_sample'], 10, 3)}"
                  f"{'-' if share is None else format(100 * share, '.1f'):>9}")
    if s["prior"] == "log-uniform" and any(key in s and "kl_fit" not in s[key] for key in ("vi", "hwa")):
        print("KL / N: Molchanov et al.'s approximation (stored by an earlier version; the exact KL is reported "
              "now, and vi-eval gives it)")
    print("noise %: stochastic weights with log(s^2 / m^2) > 3, mostly noise (sparse variational dropout prunes "
          "them)" if s["family"] != "variance" else "a variance network: its deterministic network (zero hidden "
          "means) predicts one class; use its samples (vi-eval)")
    for f in s["files"].values():
        print(f"posterior: {args.out / f}   (its three prediction schemes: landscape vi-eval --ckpt "
              f"{args.out / f} --out DIR)")
    return 0


def cmd_vi_eval(args: argparse.Namespace) -> int:
    from landscape.sweep import is_main
    from landscape.variational import evaluate_variational
    from landscape.plots.swag import draw_variational_figure

    result = evaluate_variational(args.ckpt, args.out, samples=args.samples, seed=args.seed,
                                  **_stored_eval_kwargs(args))
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    figures = draw_variational_figure(args.out, tuple(args.format))
    s = result.summary
    note = ("note: a variance network's hidden means are zero, so its deterministic network predicts one class "
            "(the talk's point); its information is in the variances, which only the samples use"
            if s["family"] == "variance" else None)
    _print_model_average(s, "deterministic", s["deterministic"], f"{s['method']}, {s['family']} posterior: "
                         f"{s['ensemble']['members']} samples", figures, average="ensemble",
                         sample_label="stochastic", average_label="ensemble", note=note)
    e = s.get("elbo")
    if e is not None:  # results stored by an earlier version have none
        spread = f" ± {e['elbo_se']:.3g}" if e.get("elbo_se") is not None else ""
        print(f"ELBO {e['elbo']:.7g}{spread} = -{e['train_size']} x E_q[train NLL] {e['expected_train_nll']:.4g} "
              f"- KL {e['kl']:.7g} ({e['draws']} draws; per training sample {e['elbo_per_sample']:.6g}"
              + (("; log-uniform prior: exact up to a constant per weight" if e.get("kl_exact") else
                  "; log-uniform prior: KL by Molchanov et al.'s approximation") if s.get("prior") == "log-uniform"
                 else "") + ")")
    return 0


def cmd_fge(args: argparse.Namespace) -> int:
    from landscape.averaging import run_fge
    from landscape.sweep import is_main

    result = run_fge(None, args.out, resume=args.resume, progress=_progress(args), argv=_argv(args),
                     lr=args.lr_max, lr_min=args.lr_min, cycle=args.cycle, **_average_overrides(args))
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    _print_ensemble(result.summary)
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    from landscape.averaging import run_snapshots
    from landscape.sweep import is_main

    if not args.from_ckpt and not args.model:
        args.model = "convnet"
    result = run_snapshots(None, args.out, resume=args.resume, progress=_progress(args), argv=_argv(args),
                           lr=args.lr, cycle=args.cycle, **_average_overrides(args))
    if not is_main():  # under torchrun, rank 0 reports
        return 0
    _print_ensemble(result.summary)
    return 0


def cmd_sharpness(args: argparse.Namespace) -> int:
    from landscape.inputs import load_points
    from landscape.sharpness import evaluate_sharpness
    from landscape.sweep import process_device
    from landscape.plots.sharpness import draw_sharpness_figure

    pts = load_points(args.checkpoints, model=args.model, model_kwargs=dict(args.model_kwargs),
                      data_overrides=_data_overrides(args), device=process_device(args.device))
    quiet = _progress(args) is False
    finished = args.resume and (args.out / "sharpness.npz").exists()

    def report(label, s) -> None:
        if not quiet:
            print(f"{label}: top eigenvalue {s.ritz[0]:.4g}, trace {s.trace:.4g} ± {s.trace_se:.2g} "
                  f"({s.hvps} Hessian-vector products, {s.seconds:.0f} s)", file=sys.stderr, flush=True)

    result = evaluate_sharpness(pts.model, pts.vectors, pts.data, args.out, labels=pts.labels, top=args.top,
                                iters=args.iters, trace_samples=args.trace_samples, seed=args.seed,
                                bn_stats=args.bn_stats, batch_size=args.batch_size,
                                density_runs=args.density_runs, layer_iters=args.layer_iters,
                                # a finished result resumed keeps its own term unless --wd is given
                                wd=args.wd if args.wd is not None or finished else _eval_wd(args, pts),
                                resume=args.resume, on_network=report, progress=_progress(args),
                                config={"argv": _argv(args), "checkpoints": [str(p) for p in args.checkpoints]})
    s = result.summary
    from landscape.plots.sharpness import steps_taken

    print(f"Hessian of the mean train NLL ({steps_taken(s)} Lanczos steps, trace from {s['trace_samples']} "
          f"Rademacher vectors, seed {s['seed']}; batch norm: {s['bn'] or 'none'}); "
          f"each Ritz value's residual in brackets")
    for n in s["networks"]:
        top = ", ".join(f"{x:.4g} [{r:.1g}]" for x, r in zip(n["top_eigenvalues"], n["top_residuals"]))
        print(f"{n['label']}: train nll {_fixed(n['train_nll'], 4)}; trace {n['trace']:.4g} ± {n['trace_se']:.2g}; "
              f"top eigenvalues {top}; lowest Ritz value {n['lowest_ritz_value']:.3g} [{n['lowest_residual']:.1g}]")
    print(f"(the weight-decay term adds {s['wd']:g} to every eigenvalue; the lowest Ritz value bounds the smallest "
          f"eigenvalue from above, and is it only when its residual is small)")
    _print_layer_traces(s)
    print(f"summary: {args.out / 'summary.json'}")
    for f in draw_sharpness_figure(args.out, tuple(args.format)):
        print(f"figure: {f}")
    return 0


# Layers printed in the sharpness table; a deeper network's are in summary.json and the figure.
MAX_LAYER_ROWS = 40


def _print_layer_traces(s: dict) -> None:
    """Each layer's share of the trace, per network (± one standard error)."""
    layers, networks = s.get("layers") or [], [n for n in s["networks"] if n.get("layer_traces") is not None]
    if not layers or not networks:
        return
    if len(layers) > MAX_LAYER_ROWS:
        print(f"the trace by layer ({len(layers)} layers): summary.json's layer_traces, and the figure")
        return
    tops = all(n.get("layer_top_eigenvalues") is not None for n in networks)
    print("the trace by layer (the trace of each layer's diagonal block of the Hessian; they add up to the trace)"
          + (f", then the block's largest eigenvalue ({s['layer_iters']} Lanczos steps)" if tops else ""))
    name = max(12, *(len(layer["name"]) + 2 for layer in layers))
    width = 32 if tops else 22
    print(f"{'layer':<{name}}{'parameters':>11}" + "".join(f"{n['label']:>{width}}" for n in networks))
    for i, layer in enumerate(layers):
        print((f"{layer['name']:<{name}}{layer['parameters']:>11}"
               + "".join(f"{n['layer_traces'][i]:>12.4g} ± {n['layer_trace_se'][i]:<7.2g}"
                         + (f"{n['layer_top_eigenvalues'][i]:>10.4g}" if tops else "") for n in networks)).rstrip())


def cmd_import(args: argparse.Namespace) -> int:
    from landscape.checkpoint import load_checkpoint
    from landscape.importing import import_checkpoint

    out = import_checkpoint(args.source, args.out, model=args.model, model_kwargs=dict(args.model_kwargs),
                            key=args.key, wd=args.wd, **_data_overrides(args))
    ck = load_checkpoint(out)
    if ck.kind == "curve":
        bends = ck.extra["curve"]["bends"]
        what = (f"a {ck.extra['curve']['type']} curve with {bends} bend{'s' if bends != 1 else ''} (evaluate it: "
                f"landscape curve --ckpt {out} --out DIR)")
    elif ck.kind == "swag":
        what = (f"SWAG moments of {ck.extra['swag']['averaged']} iterates, {ck.extra['swag']['rank']} deviations "
                f"(their model average: landscape swag --ckpt {out} --out DIR)")
    else:
        what = "a network (every command reads it without --model)"
    wd = ck.meta["train_config"].get("wd")
    print(f"{out}: {what}; model '{args.model}', data {ck.meta['dataset']['name']}, "
          + (f"weight decay {wd:g}" if wd is not None else "no weight decay recorded (--wd gives the train loss's term)"))
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from landscape.ensemble import evaluate_ensemble

    result = evaluate_ensemble(args.checkpoints, args.out, model=args.model, model_kwargs=dict(args.model_kwargs),
                               data_overrides=_data_overrides(args), device=args.device, batch_size=args.batch_size,
                               resume=args.resume)
    s = result.summary
    _print_ensemble(s)
    w = s["weight_average"]
    r = s.get("bn_reestimated")
    if r:  # like for like with the weight average: the members' own running statistics may lag their weights
        print("batch norm re-estimated on the training data:")
        for m in r["members"]:
            print(_ensemble_row(m["label"], m))
        print(_ensemble_row("ensemble", r["ensemble"]))
    print(_ensemble_row("weight average", w)
          + ("   (batch norm re-estimated)" if s.get("batch_norm", True) and not r else ""))
    for a, which in ((s["agreement"], "ensemble's"), ((r or {}).get("agreement"), "re-estimated ensemble's")):
        if a:
            print(f"the weight average predicts the {which} class on {a['same_prediction']:.2f} % of "
                  f"{s.get('eval_split', 'test')} images; mean KL(ensemble || weight average) {a['kl']:.4g} nats")
    if args.out:
        print(f"summary: {args.out / 'summary.json'}")
    return 0


def cmd_width(args: argparse.Namespace) -> int:
    from landscape.inputs import load_points
    from landscape.rays import evaluate_rays
    from landscape.sweep import is_main, process_device

    device = process_device(args.device)
    pts = load_points([args.swa, args.sgd], model=args.model, model_kwargs=dict(args.model_kwargs),
                      data_overrides=_data_overrides(args), device=device)
    evaluate_rays(pts.model, pts.vectors, pts.data, args.out, labels=["SWA", "SGD"],
                  paths=[str(args.swa), str(args.sgd)], directions=args.directions, distance=args.distance,
                  steps=args.steps, normalize=args.normalize, line=True, rise=args.rise, seed=args.seed,
                  wd=_eval_wd(args, pts), batch_size=args.batch_size,
                  bn_batches=args.bn_batches, bn_stats=args.bn_stats, points_per_pass=args.points_per_pass, precision=args.precision,
                  resume=args.resume, progress=_progress(args),
                  config={"argv": _argv(args)})
    if not is_main():
        return 0
    return _report_rays(args)


def _note_no_face(d: Path) -> None:
    print(f"{d}: no figure: a simplex of two vertices has no triangular face to draw", file=sys.stderr)


def cmd_simplex(args: argparse.Namespace) -> int:
    from landscape.curves.spro import connect_modes, espro, grow_simplex
    from landscape.sweep import is_main
    from landscape.plots.simplex import draw_simplex_figure

    if bool(args.base) == bool(args.modes):
        raise UserError("give --base A.pt [B.pt ...] (simplexes around modes) or --modes A.pt B.pt (a complex)")
    if args.base and args.connectors is not None:
        raise UserError("--connectors applies to a complex (--modes); simplexes around modes (--base) take --vertices")
    if args.modes and args.vertices is not None:
        raise UserError("--vertices applies to simplexes around modes (--base); a complex (--modes) takes "
                        "--connectors")
    vertices = args.vertices if args.vertices is not None else 3
    connectors = args.connectors if args.connectors is not None else 2
    formats = tuple(args.format)
    o = dict(_data_overrides(args), lam=args.lam, samples=args.samples, volume_weighted=args.volume_weighted,
             init=args.init, init_scale=args.init_scale,
             epochs=args.epochs, lr=args.lr, momentum=args.momentum, wd=args.wd, batch_size=args.batch_size,
             schedule=args.schedule, seed=args.seed, save_every=args.save_every, device=args.device, amp=args.amp)
    if args.model is not None:
        o["model"] = args.model
    if args.model_kwargs:
        o["model_kwargs"] = dict(args.model_kwargs)
    common = dict(resume=args.resume, progress=_progress(args), eval_samples=args.eval_samples,
                  face_resolution=args.face_grid)
    if args.base and len(args.base) > 1:
        s = espro(args.base, args.out, vertices=vertices, **common, **o)
        if not is_main():  # under torchrun, rank 0 reports
            return 0
        figures = [f for i in range(len(args.base))
                   for f in draw_simplex_figure(args.out / f"component-{i + 1}", formats)]
        split = s.get("eval_split", "test")
        print(f"ESPRO: {s['components']} simplexes of {s['vertices']} vertices")
        print(f"{'':<28}{f'{split} err %':>12}{f'{split} nll':>10}")
        for i, m in enumerate(s["modes"]):
            print(f"{'mode ' + str(i + 1):<28}{_cell(m['test_error'], 12, 2)}{_cell(m['test_nll'], 10, 4)}")
        for row in s["ensemble"]:
            if row["samples_per_component"] in (1, 2, 4, 8, 16, 32, 64) or row is s["ensemble"][-1]:
                name = f"ensemble, {row['samples_per_component']} per simplex"
                print(f"{name:<28}{_cell(row['test_error'], 12, 2)}{_cell(row['test_nll'], 10, 4)}")
    else:
        if args.base:
            r = grow_simplex(args.base[0], args.out, vertices=vertices, **common, **o)
        else:
            r = connect_modes(args.modes, args.out, connectors=connectors, **common, **o)
        if not is_main():  # under torchrun, rank 0 reports
            return 0
        s = r.summary
        figures = draw_simplex_figure(args.out, formats)
        split = s.get("eval_split", "test")
        print(f"{s['kind']}: {len(s['labels'])} vertices, {len(s['simplexes'])} simplex(es), volume {s['volume']:.4g}")
        print(f"{'point':<16}{'train loss':>12}{f'{split} err %':>12}")
        for v in s["vertices"]:
            print(f"{v['label']:<16}{_cell(v['train_loss'], 12, 4)}{_cell(v['test_error'], 12, 2)}")
        print(f"{s['samples']} samples: {split} error mean {s['test_error_mean']:.2f}%, max {s['test_error_max']:.2f}%; "
              f"train loss max {_fixed(s['train_loss_max'], 4)}; ensemble {split} error {s['ensemble']['test_error']:.2f}%, "
              f"nll {_fixed(s['ensemble']['test_nll'], 4)}")
        if "line" in s:
            line = s["line"]
            nll = f" (NLL alone {_fixed(line['train_nll_barrier'], 4)})" if "train_nll_barrier" in line else ""
            print(f"straight line between the first two modes: train-loss barrier "
                  f"{_fixed(line['train_loss_barrier'], 4)}{nll}, max train loss {_fixed(line['train_loss_max'], 4)}")
    for f in figures:
        print(f"figure: {f}")
    if not figures:
        _note_no_face(args.out)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import inspect

    from landscape.models import MODELS, list_models

    if launch_rank() != 0:  # under torchrun (it joins no process group): one list
        return 0
    for name in list_models():
        # The options --model-kwargs can set (the dataset gives num_classes and input_shape).
        options = [f"{p.name}={p.default!r}" for p in inspect.signature(MODELS[name]).parameters.values()
                   if p.name not in ("num_classes", "input_shape") and p.default is not inspect.Parameter.empty]
        print(f"{name:<14}{' '.join(options)}".rstrip())
    return 0


DEMO_OPTIONS = ("epochs", "grid", "points", "directions")  # what the demo's results depend on (demo.json)


def _check_demo(args: argparse.Namespace) -> None:
    """One line before any training for a demo option that some step would
    refuse only when it comes to it, and for a rerun in a demo folder made
    with other options (whose steps would refuse them one by one, with
    advice the demo cannot follow: --resume); then ``demo.json`` records
    the options (in a folder an earlier build began, once every step has
    taken them), and the steps reuse what is finished. A record whose run
    has not begun (no endpoint yet) is replaced."""
    from landscape.checkpoint import _check_out, read_json, stored_config, write_json
    from landscape.geometry import check_grid_options

    if args.points < 3:
        raise UserError(f"--points must be at least 3 (the ends and a point between them), got {args.points}")
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    if args.directions < 1:
        raise UserError(f"--directions must be at least 1 (random rays per centre), got {args.directions}")
    check_grid_options(args.grid, 0.2, None, None)
    asked = _demo_record(args)
    record = args.out / "demo.json"
    _check_out(args.out, "demo")  # a file, or another command's run (its steps' folders would go inside it)
    begun = (args.out / "a").exists()  # the first step has run: its options are the run's
    trained = stored_config(args.out / "a") if begun and not record.exists() else None  # an earlier build's folder
    epochs = ((trained or {}).get("config") or {}).get("epochs")  # a train run's config.json keeps them there
    if epochs not in (None, args.epochs):  # its first step would say "--resume"
        raise UserError(f"{args.out} holds a demo run with other options (--epochs {epochs}, now "
                        f"{args.epochs}); rerun it with those to reuse its finished steps, or choose another --out")
    if record.exists() and begun:
        before = read_json(record)
        changed = [f"--{key} {before.get(key)}, now {asked[key]}" for key in DEMO_OPTIONS
                   if before.get(key) != asked[key]]
        if changed:
            raise UserError(f"{args.out} holds a demo run with other options ({'; '.join(changed)}); rerun it with "
                            f"those to reuse its finished steps, or choose another --out")
    if record.exists() or not begun:  # a folder an earlier build began is recorded once its steps took the options
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(record, asked)


def _demo_record(args: argparse.Namespace) -> dict[str, Any]:
    """What ``demo.json`` holds: the options the demo's results depend on."""
    return {"command": "demo", **{key: getattr(args, key) for key in DEMO_OPTIONS}}


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end on digits; every step reuses finished results."""
    import time

    from landscape.curves.evaluate import evaluate_curve
    from landscape.curves.fit import fit_curve, load_curve
    from landscape.curves.subspace import curve_subspace
    from landscape.averaging import run_fge, run_swa
    from landscape.device import resolve_device
    from landscape.inputs import load_points, load_trajectory
    from landscape.plane import evaluate_plane, evaluate_random_plane, evaluate_trajectory_plane
    from landscape.rays import width_report
    from landscape.subspace import sample_subspace, swag_subspace
    from landscape.swag import evaluate_swag
    from landscape.train import TrainConfig, load_data, train
    from landscape.variational import evaluate_variational, run_variational
    from landscape.curves.posterior import evaluate_posterior_curve, fit_posterior_curve
    from landscape.plots.curve import draw_curve_figure
    from landscape.plots.posterior import draw_posterior_curve_figure
    from landscape.plots.plane import draw_plane_figures
    from landscape.plots.rays import draw_rays_figures
    from landscape.plots.subspace import draw_subspace_figure
    from landscape.plots.swa import draw_swa_figure, has_swa_curve
    from landscape.plots.swag import draw_swag_figure, draw_variational_figure

    _check_demo(args)  # said before anything is trained, not at the step that uses an option
    out, bars, t0 = args.out, _progress(args) is True, time.perf_counter()  # a log has the steps' lines
    # the sweeps and samplers in a log too (a line at most every 10 s): a step of minutes was silent throughout
    sweeps = _progress(args)
    device = resolve_device(args.device)
    cfg = TrainConfig(dataset="digits", model="convnet", epochs=args.epochs, device=str(device))
    data = load_data(cfg, device)
    figures: list[Path] = []

    def step(text: str) -> None:
        print(f"[{time.perf_counter() - t0:5.0f}s] {text}", flush=True)

    def again(folder: Path, marker: str = "model.pt") -> bool:
        return (folder / marker).exists() or (folder / "last.pt").exists() or (folder / "sweep.partial.npz").exists()

    ends = {}
    for name, seed in (("a", 1), ("b", 2)):
        step(f"endpoint {name}: convnet on digits, seed {seed}, {cfg.epochs} epochs")
        ends[name] = train(cfg, out / name, seed=seed, resume=again(out / name), data=data, progress=bars,
                           save_every=1 if name == "a" else 0).summary  # a keeps its trajectory
    a, b = out / "a" / "model.pt", out / "b" / "model.pt"
    curves = {}
    for kind in ("bezier", "polychain"):
        step(f"{kind} curve with 1 bend between a and b, {cfg.epochs} epochs")
        fit_curve(a, b, out / kind, data=data, curve=kind, bends=1, epochs=cfg.epochs, device=str(device),
                  resume=again(out / kind), progress=bars)
        ev_dir = out / f"{kind}-eval"
        step(f"{kind}: curve and straight line at {args.points} points")
        curves[kind] = evaluate_curve(out / kind / "model.pt", ev_dir, points=args.points, data=data,
                                      device=str(device), resume=again(ev_dir, "curve.npz"), progress=sweeps).summary
        figures += draw_curve_figure(ev_dir)
    from landscape.plots.compare import draw_comparison

    figures += draw_comparison([out / "bezier-eval", out / "polychain-eval"], out / "compare")  # one figure, both
    step(f"plane through the Bezier curve, {args.grid}x{args.grid}")
    loaded = load_curve(out / "bezier" / "model.pt", device)
    import torch

    with torch.no_grad():
        W = loaded.curve.anchors().detach()
        path = loaded.curve.points(torch.linspace(0, 1, 61, dtype=torch.float64, device=W.device))
    evaluate_plane(loaded.model, [W[0], W[-1], W[1]], data, out / "plane", labels=["a", "b", "bend"], path=path,
                   path_label="bezier curve", grid=args.grid, wd=cfg.wd, resume=again(out / "plane", "plane.npz"), progress=sweeps)
    figures += draw_plane_figures(out / "plane")
    step("SWA and continued SGD from endpoint a (constant rate 0.05, 10 epochs, the average evaluated every epoch), "
         "SWAG's moments collected")
    swa = run_swa(None, out / "swa", from_ckpt=str(a), epochs=10, swa_lr=0.05, swag_rank=10, eval_every=1, data=data,
                  device=str(device), resume=again(out / "swa"), progress=bars).summary
    if has_swa_curve(out / "swa"):  # a demo folder from before --eval-every has none
        figures += draw_swa_figure(out / "swa")
    step("SWAG: the model average of 30 samples around the SWA solution")
    swag = evaluate_swag(out / "swa" / "swag.pt", out / "swag", samples=30, data=data, device=str(device),
                         resume=again(out / "swag", "swag.npz"), progress=sweeps).summary
    figures += draw_swag_figure(out / "swag")
    step("subspace inference: 30 elliptical slice samples in SWAG's rank-2 PCA subspace and in the Bezier "
         f"curve's plane (with its log-posterior on a {args.grid}x{args.grid} grid)")
    subspaces = {}
    for name, space, grid in (("pca", swag_subspace(out / "swa" / "swag.pt", "pca", 2, device=device), 0),
                              ("curve", curve_subspace(out / "bezier" / "model.pt", device), args.grid)):
        folder = out / f"subspace-{name}"
        subspaces[name] = sample_subspace(space, folder, samples=30, grid=grid, data=data,
                                          resume=again(folder, "subspace.npz"), progress=sweeps).summary
        figures += draw_subspace_figure(folder)
    step(f"width report: SWA vs SGD along the line through them and {args.directions} random rays each")
    width = width_report(out / "swa" / "swa.pt", out / "swa" / "sgd.pt", out / "width", directions=args.directions,
                         steps=6,
                         device=str(device), resume=again(out / "width", "rays.npz"), progress=sweeps).summary
    figures += draw_rays_figures(out / "width")
    step(f"Li et al.'s planes, {args.grid}x{args.grid}: around SWA and around SGD in two filter-normalised random "
         f"directions (the same draws), and endpoint a's training trajectory")
    for name in ("swa", "sgd"):
        pts = load_points([out / "swa" / f"{name}.pt"], device=device)
        evaluate_random_plane(pts.model, pts.vectors[0], data, out / f"around-{name}", label=name.upper(),
                              grid=args.grid, wd=cfg.wd, resume=again(out / f"around-{name}", "plane.npz"),
                              progress=sweeps)
        figures += draw_plane_figures(out / f"around-{name}")
    if list((out / "a").glob("checkpoint-*.pt")):  # a run of an earlier demo kept none
        pts = load_trajectory([out / "a"], device=device)
        evaluate_trajectory_plane(pts.model, pts.vectors, data, out / "trajectory",
                                  labels=pts.labels, grid=args.grid, wd=cfg.wd,
                                  resume=again(out / "trajectory", "plane.npz"), progress=sweeps)
        figures += draw_plane_figures(out / "trajectory")
    step("FGE from endpoint b: 4 cycles of 2 epochs, rate 0.05 -> 0.0005")
    fge = run_fge(None, out / "fge", from_ckpt=str(b), epochs=8, cycle=2, lr=0.05, lr_min=0.0005, data=data,
                  device=str(device), resume=again(out / "fge"), progress=bars).summary
    last = max(1, cfg.epochs // 3)  # HWA over the last third, a mean averaged every 2 epochs
    step(f"variational dropout from endpoint a (one alpha per weight, log-uniform prior), {cfg.epochs} epochs, HWA "
         f"over the last {last}; the three prediction schemes of vi.pt and hwa.pt, 30 samples each")
    run_variational(None, out / "vi", from_ckpt=str(a), family="weight", epochs=cfg.epochs,
                    hwa_start=cfg.epochs - last, cycle=2 if last >= 2 else 1,
                    data=data, device=str(device), resume=again(out / "vi"), progress=bars)
    schemes = {}
    for name in ("vi", "hwa"):
        folder = out / f"{name}-eval"
        schemes[name] = evaluate_variational(out / "vi" / f"{name}.pt", folder, samples=30, data=data,
                                             device=str(device), resume=again(folder, "variational.npz"),
                                             progress=sweeps).summary
        figures += draw_variational_figure(folder)
    averages = [out / name for name in ("swag", "subspace-pca", "subspace-curve", "vi-eval", "hwa-eval")]
    figures += draw_comparison(averages, out / "compare")  # every model average in one figure
    bnn_points = min(args.points, 21)
    step(f"variational dropout from endpoint b (as from a), and a Bezier curve between the two posteriors, "
         f"{cfg.epochs} epochs: the expected train NLL and the ensemble of 5 draws along it and the line, "
         f"{bnn_points} points")
    run_variational(None, out / "vi-b", from_ckpt=str(b), family="weight", epochs=cfg.epochs,
                    hwa_start=cfg.epochs - last, cycle=2 if last >= 2 else 1,
                    data=data, device=str(device), resume=again(out / "vi-b"), progress=bars)
    fit_posterior_curve(out / "vi" / "vi.pt", out / "vi-b" / "vi.pt", out / "vi-bezier", data=data, epochs=cfg.epochs,
                        device=str(device), resume=again(out / "vi-bezier"), progress=bars)
    folder = out / "vi-bezier-eval"
    bnn = evaluate_posterior_curve(out / "vi-bezier" / "model.pt", folder, points=bnn_points, samples=5, data=data,
                                   device=str(device), resume=again(folder, "posterior-curve.npz"),
                                   progress=sweeps).summary
    figures += draw_posterior_curve_figure(folder)
    step("done")

    print()
    print(f"{'path (a -> b)':<26}{'train-loss barrier':>20}{'train-NLL barrier':>19}{'test-err barrier':>18}"
          f"{'max test err %':>16}{'length':>9}")
    line = curves["bezier"]["line"]
    rows = [("straight line", line), ("Bezier curve, 1 bend", curves["bezier"]["curve"]),
            ("polygonal chain, 1 bend", curves["polychain"]["curve"])]
    for name, p in rows:  # the NLL's barrier from the metrics: a result of an earlier build has it there only
        print(f"{name:<26}{_cell(p['train_loss_barrier'], 20, 4)}{_cell(p['metrics']['train_nll']['barrier'], 19, 4)}"
              f"{_cell(p['test_error_barrier'], 18, 2)}{_cell(p['test_error_max'], 16, 2)}{_cell(p['length'], 9, 2)}")
    for name, key in (("VD posteriors, line", "line"), ("VD posteriors, Bezier", "curve")):
        p = bnn[key]
        print(f"{name:<26}{'-':>20}{_cell(p['expected_train_nll_barrier'], 19, 4)}"
              f"{_cell(p['ensemble_test_error_barrier'], 18, 2)}{_cell(p['ensemble_test_error_max'], 16, 2)}"
              f"{_cell(p['length'], 9, 2)}")
    print("(train loss: NLL + wd/2 ||w||^2, whose second term falls along the curves. VD posteriors: between the "
          "variational-dropout posteriors of a and b, no weight decay; the expected train NLL of 5 weight draws, "
          "their ensemble's test error; the length in the posteriors' parameter space)")
    print()
    widths = {c["label"]: c for c in width["centers"]}

    def w(label: str) -> str:
        v = widths[label]["median_width"]
        return _cell(v, 14, 3) if v is not None else f"{'> ' + format(width['distance'], '.3g'):>14}"

    print(f"{'model':<26}{'test err %':>12}{'test nll':>10}{'median width':>14}")
    print(f"{'endpoint a':<26}{_cell(ends['a']['test_error'], 12, 2)}{_cell(ends['a']['test_nll'], 10, 4)}{'':>14}")
    print(f"{'endpoint b':<26}{_cell(ends['b']['test_error'], 12, 2)}{_cell(ends['b']['test_nll'], 10, 4)}{'':>14}")
    print(f"{'SGD (continued from a)':<26}{_cell(swa['sgd']['test_error'], 12, 2)}"
          f"{_cell(swa['sgd']['test_nll'], 10, 4)}{w('SGD')}")
    print(f"{'SWA (from a)':<26}{_cell(swa['swa']['test_error'], 12, 2)}{_cell(swa['swa']['test_nll'], 10, 4)}"
          f"{w('SWA')}")
    print(f"{'SWAG average (' + str(swag['bma']['members']) + ')':<26}{_cell(swag['bma']['test_error'], 12, 2)}"
          f"{_cell(swag['bma']['test_nll'], 10, 4)}{'':>14}")
    for name, label in (("pca", "ESS, SWAG PCA plane"), ("curve", "ESS, curve plane")):
        b = subspaces[name]["bma"]
        print(f"{label + ' (' + str(b['members']) + ')':<26}{_cell(b['test_error'], 12, 2)}"
              f"{_cell(b['test_nll'], 10, 4)}{'':>14}")
    for name, label in (("vi", "VD last"), ("hwa", "VD HWA avg")):
        e = schemes[name]
        print(f"{label + ', deterministic':<26}{_cell(e['deterministic']['test_error'], 12, 2)}"
              f"{_cell(e['deterministic']['test_nll'], 10, 4)}{'':>14}")
        print(f"{label + ', ensemble (' + str(e['ensemble']['members']) + ')':<26}"
              f"{_cell(e['ensemble']['test_error'], 12, 2)}"
              f"{_cell(e['ensemble']['test_nll'], 10, 4)}{'':>14}")
    print(f"{'FGE members (mean)':<26}{_cell(fge['member_test_error_mean'], 12, 2)}"
          f"{_cell(statistics.fmean(m['test_nll'] for m in fge['members']), 10, 4)}{'':>14}")
    print(f"{'FGE ensemble (' + str(fge['ensemble']['members']) + ')':<26}{_cell(fge['ensemble']['test_error'], 12, 2)}"
          f"{_cell(fge['ensemble']['test_nll'], 10, 4)}{'':>14}")
    print()
    print(f"width: distance along a random unit direction at which train loss rises by {width['rise']:g}")
    print(f"total {time.perf_counter() - t0:.0f} s; figures:")
    for f in figures:
        print(f"  {f}")
    from landscape.checkpoint import write_json

    write_json(out / "demo.json", _demo_record(args))  # every step took these options
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Mode connectivity and loss-landscape analysis for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", help="train an endpoint network", description="Train an endpoint network with SGD.")
    add_data_args(p)
    add_model_args(p)
    add_optim_args(p)
    add_run_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("connect", help="fit a curve of low loss between two endpoints",
                       description="Fit a Bezier curve or polygonal chain between two trained networks "
                                   "(Garipov et al. 2018).")
    add_curve_fit_args(p, "checkpoint of the first endpoint", "checkpoint of the second endpoint", "endpoint")
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    add_optim_args(p)
    add_run_args(p)
    p.set_defaults(func=cmd_connect)

    p = sub.add_parser("curve", help="evaluate a curve and the straight line between its ends",
                       description="Evaluate train loss / error and test NLL / error along a fitted curve and "
                                   "the straight line, with batch norm re-estimated at every point.")
    p.add_argument("--ckpt", required=True, type=user_path, help="curve checkpoint written by 'landscape connect'")
    p.add_argument("--points", type=int, default=None,
                   help="evenly spaced values of t (default: 61; 21 for a curve between posteriors)")
    p.add_argument("--samples", type=int, default=None,
                   help="a curve between variational posteriors (vi-connect): weight draws per point (default: 10)")
    p.add_argument("--seed", type=int, default=None,
                   help="a curve between variational posteriors: seed of the draws' noise, shared by every point "
                        "(default: 0, as vi-eval's)")
    add_stored_eval_args(p)
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("plane", help="the loss surface in the plane of a curve or of three networks, around one "
                                     "network, or of a training trajectory",
                       description="Evaluate every metric on a grid in the plane through a curve's endpoints and "
                                   "bend, or through three checkpoints (Garipov et al. 2018, figs. 1-2); around "
                                   "one checkpoint in two random filter-normalised directions, or in the plane of a "
                                   "training run's trajectory (Li et al. 2018).")
    g = p.add_argument_group("plane")
    g.add_argument("--ckpt", type=user_path, help="curve checkpoint: the plane of its endpoints and middle bend, "
                                             "with the curve drawn in")
    g.add_argument("--points", type=user_path, nargs=3, metavar=("A.pt", "B.pt", "C.pt"),
                   help="three checkpoints: origin A, x towards B, y towards C")
    g.add_argument("--mark", type=user_path, nargs="+", metavar="D.pt", help="further checkpoints to project and mark")
    g.add_argument("--grid", type=int, default=21, help="grid points per axis (default: 21)")
    g.add_argument("--center", type=user_path, metavar="A.pt",
                   help="one checkpoint: the plane around it of two random directions (Li et al. 2018)")
    g.add_argument("--trajectory", type=user_path, nargs="+", metavar="RUN",
                   help="a training run's folder (its checkpoint-NNN.pt from --save-every, then model.pt) or "
                        "checkpoints in training order: the plane of the trajectory's first two principal "
                        "directions around its end, the trajectory drawn in (Li et al. 2018). Several folders "
                        "(and files) are one trajectory in the order given, e.g. a run and its continuation "
                        "('swa --from') in another folder")
    g.add_argument("--ignore", default=None, choices=["biasbn"],
                   help="with --trajectory: leave biases and batch-norm parameters out of the PCA (Li et al.'s "
                        "--ignore biasbn)")
    g.add_argument("--normalize", default=None,
                   help="with --center: filter (default; Li et al.'s filter normalisation) or gaussian "
                        "(unit-norm directions, as rays)")
    g.add_argument("--seed", type=int, default=None, help="with --center: seed of the two directions (default: 0; "
                                                         "rays --directions 2 draws the same with the same seed)")
    g.add_argument("--span", type=float, default=None,
                   help="with --center: the grid spans [-SPAN, SPAN] on both axes (default: 1 with filter, half "
                        "the centre's norm with gaussian)")
    g.add_argument("--margin", type=float, default=None,
                   help="margin around the points, as a fraction of their extent (default: 0.2)")
    g.add_argument("--xrange", type=float, nargs=2, metavar=("LO", "HI"),
                   help="explicit x range (weight-space units; with --center, multiples of the first direction)")
    g.add_argument("--yrange", type=float, nargs=2, metavar=("LO", "HI"), help="explicit y range")
    p.add_argument("--out", required=True, type=user_path, metavar="DIR", help="folder for the result files")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    add_eval_args(p)
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    p.set_defaults(func=cmd_plane)

    p = sub.add_parser("rays", help="loss along random rays from one or two centres: widths and asymmetry",
                       description="Train loss and test error along random directions from a centre (and a "
                                   "compare point), widths and asymmetries (Izmailov et al. 2018; Li et al. 2018).")
    g = p.add_argument_group("rays")
    g.add_argument("--center", required=True, type=user_path, help="checkpoint at the centre of the rays")
    g.add_argument("--compare", type=user_path, help="a second centre, with the same directions")
    g.add_argument("--directions", type=int, default=10, help="number of random directions (default: 10)")
    g.add_argument("--distance", type=float, default=None,
                   help="how far each ray goes on each side (default: half the centre's norm; 1 with --normalize filter)")
    g.add_argument("--steps", type=int, default=10, help="points per side of each ray (default: 10)")
    g.add_argument("--normalize", default="gaussian", help="gaussian (unit norm, the SWA paper) or filter (Li et al.)")
    g.add_argument("--line", action="store_true",
                   help="also the line through the two centres, extended both ways as far in weight space as the "
                        "rays reach (--distance; with --normalize filter, --distance times the directions' mean norm)")
    g.add_argument("--rise", type=float, default=0.1, help="train-loss rise that defines the width (default: 0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the directions")
    p.add_argument("--out", required=True, type=user_path, metavar="DIR", help="folder for the result files")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    add_eval_args(p)
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    p.set_defaults(func=cmd_rays)

    def add_start(p: argparse.ArgumentParser, scratch: bool) -> None:
        g = p.add_argument_group("start")
        if scratch:
            m = g.add_mutually_exclusive_group(required=True)
            m.add_argument("--from", dest="from_ckpt", type=user_path, metavar="CKPT", help="continue from a trained network")
            m.add_argument("--from-scratch", action="store_true", help="train from a fresh initialisation")
        else:
            g.add_argument("--from", dest="from_ckpt", type=user_path, metavar="CKPT", required=True,
                           help="the trained network to start from")

    p = sub.add_parser("swa", help="stochastic weight averaging; saves the average and the final SGD iterate",
                       description="SWA (Izmailov et al. 2018): average the SGD iterates every --cycle epochs "
                                   "(constant rate) or at the end of each cycle (cyclic rate).")
    add_start(p, scratch=True)
    g = p.add_argument_group("SWA")
    g.add_argument("--swa-start", type=int, default=0, help="epochs before averaging starts (default: 0)")
    g.add_argument("--swa-lr", type=float, default=0.01, help="the SWA rate (cyclic: its low end)")
    g.add_argument("--swa-lr-max", type=float, default=None, help="cyclic: the high end (default: 10 x --swa-lr)")
    g.add_argument("--schedule", default="constant", help="constant or cyclic (after --swa-start)")
    g.add_argument("--cycle", type=int, default=1, help="epochs between averages / per cycle (default: 1)")
    g.add_argument("--keep-snapshots", action="store_true", help="also save every averaged iterate")
    g.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="also evaluate the running average every N epochs and at the last (batch norm "
                        "re-estimated for it), beside the SGD iterate in metrics.jsonl, and draw swa.png "
                        "(default: 0: only at the end)")
    g.add_argument("--format", nargs="+", default=["png"], choices=["png", "pdf", "svg"],
                   help="formats of swa.png (with --eval-every)")
    g.add_argument("--swag-rank", type=int, default=0, metavar="K",
                   help="also collect SWAG's moments, keeping the last K deviations (20 in the paper), "
                        "into swag.pt for 'landscape swag' (default: 0: none)")
    g.add_argument("--lr", type=float, default=None,
                   help="the rate before --swa-start, which then decays to --swa-lr (default: 0.05); "
                        "with --swa-start 0 it would be unused, and is refused")
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    add_optim_args(p, epochs=10, lr=None, schedule=False)
    add_run_args(p)
    p.set_defaults(func=cmd_swa)

    p = sub.add_parser("swag", help="SWAG: the Bayesian model average of samples around an SWA solution",
                       description="SWAG (Maddox et al. 2019): sample weights from the Gaussian that 'landscape swa "
                                   "--swag-rank K' fitted to the SGD iterates, re-estimate batch norm for each, and "
                                   "average their predictions; against the SWA mean.")
    p.add_argument("--ckpt", required=True, type=user_path, help="swag.pt written by 'landscape swa --swag-rank K'")
    p.add_argument("--samples", type=int, default=30, help="weight samples averaged (default: 30)")
    p.add_argument("--scale", type=float, default=None,
                   help="covariance scale (default: the paper's, 0.5 for SWAG: (diagonal + low-rank) / 2; "
                        "1 with --diag: SWAG-Diagonal's N(mean, diagonal))")
    p.add_argument("--diag", action="store_true", help="SWAG-Diagonal: leave out the low-rank term")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples")
    add_stored_eval_args(p)
    p.set_defaults(func=cmd_swag)

    p = sub.add_parser("subspace", help="subspace inference: sample a low-dimensional subspace's posterior, "
                                        "average the samples' predictions",
                       description="Subspace inference (Izmailov et al. 2019): the posterior over z in w = shift + "
                                   "P^T z (prior N(0, prior-scale^2 I), likelihood exp(-N train NLL / T), batch norm "
                                   "re-estimated at every point) sampled by elliptical slice sampling (--method ess) "
                                   "or the No-U-Turn Sampler (--method nuts), or approximated by VI (--method vi: a Gaussian or a RealNVP flow), "
                                   "then the model average "
                                   "of the samples. Subspaces: pca or random around the SWA mean of swag.pt, or the "
                                   "plane of a fitted curve.")
    p.add_argument("--ckpt", required=True, type=user_path,
                   help="swag.pt (from 'landscape swa --swag-rank K') or a curve (from 'landscape connect')")
    p.add_argument("--basis", default="auto", choices=["auto", "pca", "random", "curve"],
                   help="auto (default): pca for swag.pt, curve for a curve")
    p.add_argument("--rank", type=int, default=None, help="dimension of a pca or random subspace (default: 2)")
    p.add_argument("--samples", type=int, default=30, help="posterior samples averaged (default: 30)")
    p.add_argument("--method", default="ess", choices=["ess", "nuts", "vi"],
                   help="ess (default): elliptical slice sampling; nuts: the No-U-Turn Sampler (Hamiltonian Monte "
                        "Carlo); vi: fit q(z) (N(mu, diag sigma^2), or a flow: --vi-family) by SGD on the ELBO, "
                        "then sample it")
    p.add_argument("--chains", type=int, default=1,
                   help="chains, their proposals evaluated together (default: 1, as the paper)")
    p.add_argument("--burn-in", type=int, default=0, metavar="B",
                   help="steps of every chain discarded before samples are kept (default: 0, as the paper); with "
                        "nuts they also adapt the step size (without them the first size found is kept)")
    p.add_argument("--max-depth", type=int, default=None,
                   help="nuts: largest tree depth, at most 2^D - 1 leapfrog steps a sample (default: 8)")
    p.add_argument("--mass", default=None, choices=["diag", "identity"],
                   help="nuts: diag (default) estimates a diagonal mass matrix from a --burn-in of 50 or more in "
                        "Stan's windows; identity keeps the unit one")
    p.add_argument("--vi-epochs", type=int, default=None, help="vi: epochs of the fit (default: 50)")
    p.add_argument("--vi-lr", type=float, default=None, help="vi: SGD rate, momentum 0.9 (default: 0.1)")
    p.add_argument("--vi-batch-size", type=int, default=None,
                   help="vi: training batch of the fit, which runs in fp32 with batch statistics (default: 128)")
    p.add_argument("--vi-init-std", type=float, default=None, help="vi: sigma's starting value (default: 1)")
    p.add_argument("--vi-family", default=None, choices=["gaussian", "realnvp"],
                   help="vi: q's family: gaussian (default), N(mu, diag sigma^2); realnvp, mu + sigma g(eps) with g a "
                        "RealNVP flow (4 affine couplings; rank 2 or more)")
    p.add_argument("--grid", type=int, default=0, metavar="G",
                   help="also evaluate the log-posterior on a G x G grid over z_1, z_2 for the figure (default: 0: none)")
    p.add_argument("--temperature", type=float, default=1.0, help="posterior temperature T (default: 1)")
    p.add_argument("--prior-scale", type=float, default=1.0, help="prior standard deviation of z (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (and of a random basis)")
    add_stored_eval_args(p)
    p.set_defaults(func=cmd_subspace)

    p = sub.add_parser("vi", help="a Bayesian network: a variational posterior over the weights "
                                  "(mean-field Gaussian, variational dropout, variance network; HWA)",
                       description="Variational inference over the weights of the linear and convolution layers: "
                                   "q(w) = N(m, s^2) per weight in one of five families, a log-uniform or Gaussian "
                                   "prior, the local reparameterisation trick; with --hwa-start, HWA averages the "
                                   "means along a cyclical rate. Writes vi.pt (and hwa.pt) for 'landscape vi-eval'.")
    add_start(p, scratch=True)
    g = p.add_argument_group("posterior")
    g.add_argument("--family", default="additive", choices=["additive", "weight", "neuron", "layer", "variance"],
                   help="additive: N(mu, sigma^2); weight / neuron / layer: variational dropout N(mu, alpha mu^2) "
                        "with alpha per weight / output unit / layer; variance: a variance network N(0, sigma^2)")
    g.add_argument("--prior", default="auto", choices=["auto", "log-uniform", "gaussian"],
                   help="auto (default): gaussian for --family additive, log-uniform for the others")
    g.add_argument("--prior-scale", type=float, default=1.0, help="the Gaussian prior's standard deviation")
    g.add_argument("--temperature", type=float, default=1.0,
                   help="T in the loss NLL + T KL / N (T < 1: a cold posterior)")
    g.add_argument("--init-alpha", type=float, default=0.01, help="the first s^2 / mu^2 of every weight")
    g.add_argument("--kl-warmup", type=int, default=0, metavar="E", help="ramp T up from 0 over the first E epochs")
    g.add_argument("--optimizer", default="adam", choices=["adam", "sgd"],
                   help="adam (default, as the variational dropout papers) or sgd with --momentum")
    g = p.add_argument_group("HWA")
    g.add_argument("--hwa-start", type=int, default=None, metavar="E",
                   help="from epoch E freeze the variances and average the means every --cycle epochs "
                        "(default: no HWA)")
    g.add_argument("--hwa-lr", type=float, default=0.001, help="the cyclical rate's low end, where means are averaged")
    g.add_argument("--hwa-lr-max", type=float, default=None, help="its high end (default: 10 x --hwa-lr)")
    g.add_argument("--cycle", type=int, default=1, help="epochs per cycle")
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=50, help="passes over the training set")
    g.add_argument("--lr", type=float, default=None, help="initial learning rate (default: 0.01)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (--optimizer sgd)")
    g.add_argument("--batch-size", type=int, default=128, help="training minibatch size")
    g.add_argument("--schedule", default=None,
                   help="without HWA: paper (the default: constant, then linear decay to 1%% from 50%% to 90%%), "
                        "cosine, constant")
    add_run_args(p)
    p.set_defaults(func=cmd_vi, wd=0.0)

    p = sub.add_parser("vi-eval", help="a variational posterior's prediction schemes: deterministic, stochastic, "
                                       "ensemble",
                       description="Evaluate vi.pt / hwa.pt three ways (Molchanov's talk): the network of the "
                                   "posterior means, single weight samples, and the ensemble of --samples draws; "
                                   "batch norm re-estimated for each.")
    p.add_argument("--ckpt", required=True, type=user_path, help="vi.pt or hwa.pt written by 'landscape vi'")
    p.add_argument("--samples", type=int, default=30, help="weight samples averaged (default: 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples")
    add_stored_eval_args(p)
    p.set_defaults(func=cmd_vi_eval)

    p = sub.add_parser("vi-connect", help="fit a curve of low loss between two variational posteriors",
                       description="Fit a Bezier curve or polygonal chain between two posteriors written by "
                                   "'landscape vi' (one family, prior and network), over their means and "
                                   "log-variance parameters, minimising the negative ELBO per sample along it "
                                   "(E_t[E_q NLL + T KL / N], t ~ U(0, 1)): mode connectivity for Bayesian networks. "
                                   "Evaluate it with 'landscape curve'.")
    g = add_curve_fit_args(p, "the first posterior (vi.pt or hwa.pt)", "the second posterior", "posterior")
    g.add_argument("--temperature", type=float, default=None,
                   help="T in NLL + T KL / N (default: the temperature the start posterior was trained with)")
    g.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="adam (default, as 'vi') or sgd")
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    g.add_argument("--lr", type=float, default=0.01, help="initial learning rate (default: 0.01)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (--optimizer sgd)")
    g.add_argument("--batch-size", type=int, default=128, help="training minibatch size")
    g.add_argument("--schedule", default="paper",
                   help="paper (constant, then linear decay to 1%% from 50%% to 90%% of training), cosine, constant")
    add_run_args(p)
    p.set_defaults(func=cmd_vi_connect)

    p = sub.add_parser("fge", help="fast geometric ensembling from a trained network",
                       description="FGE (Garipov et al. 2018): a piecewise-linear cyclical rate updated every "
                                   "iteration, a snapshot at each minimum of the rate, their ensemble.")
    add_start(p, scratch=False)
    g = p.add_argument_group("FGE")
    g.add_argument("--cycle", type=int, default=2, help="epochs per cycle (2 to 4 in the paper; default 2)")
    g.add_argument("--lr-max", type=float, default=0.05, help="alpha_1, the rate at a cycle's start")
    g.add_argument("--lr-min", type=float, default=0.0005, help="alpha_2, the rate at a cycle's middle")
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    add_optim_args(p, epochs=8, lr=None, schedule=False)
    add_run_args(p)
    p.set_defaults(func=cmd_fge)

    p = sub.add_parser("snapshots", help="snapshot ensemble: cosine restarts, a snapshot per cycle",
                       description="Snapshot ensembles (Huang et al. 2017): cosine annealing restarted every "
                                   "--cycle epochs, a snapshot at the end of each cycle.")
    add_start(p, scratch=True)
    g = p.add_argument_group("snapshots")
    g.add_argument("--cycle", type=int, default=10, help="epochs per cosine cycle (default: 10)")
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    add_optim_args(p, epochs=40, schedule=False)
    add_run_args(p)
    p.set_defaults(func=cmd_snapshots)

    p = sub.add_parser("import", help="make a checkpoint of the papers' code (a dnn-mode-connectivity curve, "
                                      "swa_gaussian's SWAG, a network) a landscape one",
                       description="Write a landscape checkpoint of SRC: a curve of dnn-mode-connectivity's code "
                                   "(its CurveNet; num_bends N is --bends N-2 here) as a curve checkpoint, which "
                                   "'curve' and 'plane --ckpt' evaluate, swa_gaussian's SWAG moments as a swag.pt "
                                   "('swag', 'subspace'), or a network (a bare state dict, "
                                   "model_state, state_dict, or the one under --key). It records --model and the "
                                   "data options, so later commands need neither.")
    p.add_argument("source", type=user_path, metavar="SRC")
    p.add_argument("--out", type=user_path, required=True, metavar="FILE", help="the checkpoint to write (a new file)")
    p.add_argument("--key", default=None, help="the entry holding the network's state dict, e.g. swa_state_dict "
                                               "(the swa code's average beside its SGD iterate)")
    p.add_argument("--wd", type=float, default=None, help="the weight decay it was trained with: later evaluations "
                                                          "add its term to the train loss, as the papers' do")
    add_data_args(p, inherit=True, title="data (--dataset required: what SRC was trained on, recorded)")
    p.add_argument_group("model").add_argument(
        "--model", required=True, help="the network's architecture: a registered model or package.module:factory")
    p._action_groups[-1].add_argument("--model-kwargs", type=_kv, nargs="*", default=[], metavar="K=V",
                                      help="constructor options, e.g. depth=110")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("ensemble", help="each member, their averaged prediction, and their weight average",
                       description="Test error and NLL of each checkpoint, of the averaged prediction, and of the "
                                   "weight average with batch norm re-estimated.")
    p.add_argument("checkpoints", nargs="+", type=user_path, metavar="CKPT")
    p.add_argument("--out", type=user_path, default=None, metavar="DIR", help="write summary.json here")
    p.add_argument("--batch-size", type=int, default=1000, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="accepted as by every command (ensemble shows no progress)")
    p.add_argument("--resume", action="store_true", help="show the result --out holds for the same members and data")
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("sharpness", help="curvature at solutions: the train loss's top Hessian eigenvalues and trace",
                       description="The Hessian of the mean train NLL at each checkpoint: its largest and smallest "
                                   "eigenvalues by Lanczos (Ritz values with residuals) and its trace by "
                                   "Hutchinson's estimator, batch norm as the planes re-estimate it.")
    p.add_argument("checkpoints", nargs="+", type=user_path, metavar="CKPT")
    p.add_argument("--out", required=True, type=user_path, metavar="DIR", help="folder for the result files")
    p.add_argument("--resume", action="store_true", help="continue after the networks already done in --out")
    g = p.add_argument_group("sharpness")
    g.add_argument("--top", type=int, default=5, help="eigenvalues reported, largest first (default: 5)")
    g.add_argument("--iters", type=int, default=20, help="Lanczos steps, one Hessian-vector product each (default: 20)")
    g.add_argument("--trace-samples", type=int, default=20,
                   help="Rademacher vectors of the trace estimate, one product each (default: 20)")
    g.add_argument("--density-runs", type=int, default=1,
                   help="Lanczos runs averaged in the spectral density (stochastic Lanczos quadrature); the first "
                        "is the eigenvalues' run, each further one costs --iters products (default: 1)")
    g.add_argument("--layer-iters", type=int, default=0, metavar="K",
                   help="also each layer's largest eigenvalue of its own diagonal Hessian block, by K Lanczos steps "
                        "per layer (K Hessian-vector products each); 0: only the trace by layer (default: 0)")
    g.add_argument("--seed", type=int, default=0, help="seed of the Lanczos starts and the Rademacher vectors")
    g.add_argument("--bn-stats", default="auto", choices=["auto", "population", "batches"],
                   help="population: the whole training set as one batch (the planes' loss); batches: each batch "
                        "by its own statistics (less memory); auto (default): population when it fits")
    g.add_argument("--batch-size", type=int, default=1000, help="images per pass with --bn-stats batches")
    g.add_argument("--wd", type=float, default=None, help="weight decay to report (default: as trained)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--format", nargs="+", default=["png"], choices=["png", "pdf", "svg"], help="figure formats")
    g.add_argument("--quiet", action="store_true", help="no per-network lines on stderr")
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    p.set_defaults(func=cmd_sharpness)

    p = sub.add_parser("width", help="SWA vs SGD: the line through them and random rays from each",
                       description="The SWA paper's width figures in one command: train loss and test error along "
                                   "the line through SGD and SWA extended both ways, and along random unit rays "
                                   "from each; per-centre widths.")
    p.add_argument("--swa", required=True, type=user_path, help="the SWA checkpoint")
    p.add_argument("--sgd", required=True, type=user_path, help="the SGD checkpoint")
    g = p.add_argument_group("rays")
    g.add_argument("--directions", type=int, default=10,
                   help="random directions, the same from each centre (default: 10)")
    g.add_argument("--distance", type=float, default=None,
                   help="how far each ray goes on each side (default: half the SWA point's norm; 1 with "
                        "--normalize filter)")
    g.add_argument("--steps", type=int, default=10, help="points per side of each ray")
    g.add_argument("--normalize", default="gaussian", help="gaussian or filter")
    g.add_argument("--rise", type=float, default=0.1, help="train-loss rise above the centre that defines the width")
    g.add_argument("--seed", type=int, default=0, help="seed of the directions")
    p.add_argument("--out", required=True, type=user_path, metavar="DIR", help="folder for the result files")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    add_eval_args(p)
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    p.set_defaults(func=cmd_width)

    p = sub.add_parser("simplex", help="simplexes of low loss around modes or joining them (SPRO / ESPRO)",
                       description="Grow a simplex around a mode, a complex joining modes through shared "
                                   "connectors, or (several --base) an ESPRO ensemble (Benton et al. 2021).")
    g = p.add_argument_group("simplex")
    g.add_argument("--base", type=user_path, nargs="+", metavar="A.pt", help="mode(s) to grow simplexes around")
    g.add_argument("--modes", type=user_path, nargs="+", metavar="A.pt", help="modes to join through connectors")
    g.add_argument("--vertices", type=int, default=None,
                   help="vertices of each simplex around a mode, the mode included (with --base; default 3)")
    g.add_argument("--connectors", type=int, default=None,
                   help="shared connecting vertices of a complex (with --modes; default 2)")
    g.add_argument("--lam", type=float, default=0.1,
                   help="volume regularisation lambda (scaled by 1/|log V0|, or by 1 where |log V0| is below 1; "
                        "default 0.1)")
    g.add_argument("--samples", type=int, default=5, help="points sampled from the simplex per minibatch")
    g.add_argument("--volume-weighted", action="store_true", help="choose simplexes in proportion to volume")
    g.add_argument("--init", default="centre",
                   help="start of a new vertex: centre (the frozen vertices' centroid, moved by --init-scale of its "
                        "norm along a random direction; default; the reference code starts at the centroid "
                        "itself) or random (a fresh network)")
    g.add_argument("--init-scale", type=float, default=0.05, help="see --init (default: 0.05)")
    g.add_argument("--eval-samples", type=int, default=32, help="uniform samples evaluated at the end")
    g.add_argument("--face-grid", type=int, default=10,
                   help="steps a side of the face figure's triangular grid, which has (N + 1)(N + 2) / 2 points "
                        "(default: 10: 66 points)")
    g.add_argument("--format", nargs="+", default=["png"], choices=["png", "pdf", "svg"], help="figure formats")
    add_data_args(p, inherit=True)
    add_model_args(p, default=None)
    add_optim_args(p, epochs=10, lr=0.01, epochs_help="passes over the training set for each new vertex")
    add_run_args(p)
    p.set_defaults(func=cmd_simplex)

    p = sub.add_parser("plot", help="redraw the figures of a result folder from its stored files, or compare "
                                    "several curves, planes or model averages in one figure",
                       description="With one RESULT_DIR: redraw its figures there, from its stored files. With "
                                   "several: one figure comparing them, written to --out: curve results as "
                                   "curves.<fmt> (every curve's train loss and test error against t on the same "
                                   "axes, one straight line per pair of endpoints), plane results as planes.<fmt> "
                                   "(side by side, train loss above test error), model averages (swag, subspace, "
                                   "vi-eval results) as averages.<fmt> (test NLL and error against the number of "
                                   "samples, SWAG's SWA and a posterior's means dashed).")
    p.add_argument("result_dir", type=user_path, nargs="+", metavar="RESULT_DIR")
    p.add_argument("--out", type=user_path, default=None, metavar="DIR",
                   help="folder of the comparison figure (several RESULT_DIRs); with one RESULT_DIR, the folder its "
                        "figures are redrawn in instead of it (a column's and a poster's versions side by side)")
    p.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                   help="the compared results' names in the figure, one per RESULT_DIR, given after them (default: a "
                        "curve's type and bends, a plane's curve, else the folder's name; $...$ is mathtext)")
    p.add_argument("--format", nargs="+", default=["png"], choices=["png", "pdf", "svg"], help="figure formats")
    p.add_argument("--width", type=float, default=None, metavar="INCHES",
                   help="draw every figure this wide, its labels at 8 pt as printed (legends and notes smaller): "
                        "3.25 for a paper's column, 6.75 for its page; 2.5 to 20 (default: each figure's own size, "
                        "for the screen)")
    p.add_argument("--dpi", type=int, default=None,
                   help="PNG resolution in dots per inch, 50 to 1200 (default: 150; 300 or 600 for print)")
    p.add_argument("--style", default=None, metavar="NAME|FILE",
                   help="a matplotlib style or style sheet file the figures are drawn in (e.g. a file with "
                        "'font.family: serif' to match a paper's text); the text size stays the figures' own")
    p.add_argument("--cmap", default=None, metavar="NAME",
                   help="matplotlib colormap of planes and simplex faces (default: jet_r, the papers'; viridis_r or "
                        "cividis_r read in grey print and to colour-blind readers)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="the main job end to end on the embedded digits data",
                       description="Two endpoints, a Bezier curve and a polygonal chain between them, curve and line "
                                   "evaluation, a plane through the curve, SWA vs SGD and their widths, random planes "
                                   "around them and a training trajectory's plane, SWAG's model average, subspace "
                                   "inference, an FGE ensemble, variational dropout; a table of the headline "
                                   "numbers. A rerun with the same options (demo.json records them) reuses "
                                   "finished steps.")
    p.add_argument("--out", type=user_path, default=Path("runs/demo"), metavar="DIR", help="folder of every run the demo makes")
    p.add_argument("--epochs", type=int, default=30, help="epochs of each endpoint and curve (default: 30)")
    p.add_argument("--grid", type=int, default=17, help="grid points per axis of the plane and of the curve subspace's posterior (default: 17)")
    p.add_argument("--points", type=int, default=61, help="points along each curve and line (default: 61)")
    p.add_argument("--directions", type=int, default=6, help="random rays per centre in the width report (default: 6)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the steps' lines stay)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)
    return parser


def user_path(text: str) -> Path:
    """A path option's value, with a leading ``~`` expanded as the shell would
    have (it does not in ``--out=~/x`` or a quoted ``'~/x'``): else a folder
    named ``~`` appears in the current one. An empty one (an unset shell
    variable) is refused: it would name the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?); give a file or folder")
    return Path(os.path.expanduser(text))


def _version() -> str:
    from landscape import __version__

    return __version__


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line a run records in its config.json: the one parsed
    (``main(argv)`` called from Python, the demo's steps), else the process's."""
    return list(getattr(args, "argv", None) or sys.argv)


# The options of the papers' scripts (dnn-mode-connectivity, swa, swa_gaussian) that landscape names otherwise,
# and training's --amp given to an evaluation.
_PAPERS_OPTIONS = {
    "--num_bends": "--bends counts only the free points between the ends: the papers' --num_bends N is --bends N-2",
    "--fix_start": "the ends are fixed by default (--free-start / --free-end train them)",
    "--fix_end": "the ends are fixed by default (--free-start / --free-end train them)",
    "--init_start": "the ends are --start and --end",
    "--init_end": "the ends are --start and --end",
    "--init_linear": "the bends start on the straight line by default",
    "--num_points": "the points along the curve are --points",
    "--dir": "the run's folder is --out",
    "--lr_init": "the initial learning rate is --lr",
    "--use_test": "the test set is used by default; --val-size N holds N training images out instead",
    "--transform": "the inputs' normalisation is --data-normalization (their --transform ResNet is resnet, VGG is "
                   "vgg); augmentation follows --dataset",
    "--cov_mat": "SWAG's low-rank part is --swag-rank K (0: diagonal only)",
    "--max_num_models": "SWAG's rank is --swag-rank K",
    "--swa_c_epochs": "the epochs between SWA's averages are --cycle",
    "--eval_freq": "the evaluation interval is --eval-every",
    "--save_freq": "checkpoints are kept with --save-every N",
    "--amp": "evaluations take --precision bf16; --amp is training's spelling",
}


def _option_hint(parser: argparse.ArgumentParser, word: str) -> str:
    """What an unrecognised option a user of the papers' scripts would type is
    called here: their snake_case spellings, and the options named otherwise."""
    name = word.split("=", 1)[0]
    if not name.startswith("--"):
        return ""
    known = {o for a in parser._actions for o in a.option_strings}
    if any(o.startswith(name) for o in known):  # argparse takes it as an abbreviation (--dir for --directions)
        return ""
    dashed = name.replace("_", "-")
    if name in _PAPERS_OPTIONS:
        hint = _PAPERS_OPTIONS[name]
        mentioned = [o for o in re.findall(r"--[a-z][a-z_-]*", hint) if o not in _PAPERS_OPTIONS]
        if all(o in known for o in mentioned):  # not a hint that names options this command lacks
            return f"{name}: {hint}"
    if dashed != name and dashed in known:
        return f"did you mean {dashed}?"
    return ""


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, but an option the subcommand lacks is reported
    by the subcommand's parser (its usage, its --help), not the top one's."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    words = list(map(str, argv)) if argv is not None else sys.argv[1:]
    commands.choices["plot"].labels_given = "--labels" in words  # for its error when --labels took the folders
    sub = commands.choices.get(words[0]) if words else None
    if sub is not None:  # the papers' spellings first: a --dir for --out would otherwise read "--out is required"
        spelled = [(word, _option_hint(sub, word)) for word in words[1:]]
        if any(hint for _, hint in spelled):
            sub.error(f"unrecognized arguments: {' '.join(w for w, h in spelled if h)} "
                      f"({'; '.join(h for _, h in spelled if h)})")
    args, extra = parser.parse_known_args(argv)
    args.argv = [PROG, *words] if argv is not None else list(sys.argv)
    if extra:
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        from landscape.data import refuse_data_path

        refuse_data_path(getattr(args, "dataset", None), getattr(args, "data_path", None))
    except UserError as e:
        commands.choices[args.command].error(str(e))
    dataset = getattr(args, "dataset", None)  # None: inherited from a checkpoint, known later
    shaped = sorted({w.split("=", 1)[0] for w in words if w.startswith("--synthetic-")})
    if shaped and dataset is not None and str(dataset).strip().lower() != "synthetic":  # trained on it silently
        commands.choices[args.command].error(f"{', '.join(shaped)} appl{'ies' if len(shaped) == 1 else 'y'} to "
                                             f"--dataset synthetic only; the {dataset} data has its own shape, "
                                             f"classes and sizes")
    spelled = getattr(args, "train_precision", None)  # a training command's --precision: --amp spelled otherwise
    if spelled is not None:
        if spelled == "fp32" and args.amp:
            commands.choices[args.command].error("--amp is bf16 autocast; it contradicts --precision fp32")
        args.amp = args.amp or spelled == "bf16"
    return args


# Seconds a SIGTERM may wait for the main thread to meet it under torchrun: one blocked in a call that does not
# return (a collective whose peer is gone, a rendezvous no peer joins) never does. torchrun and Slurm send
# SIGKILL 30 s after their SIGTERM.
STOP_GRACE = 10.0


@contextmanager
def _stops_met() -> Iterator[None]:
    """The command's SIGTERM handler (:class:`~landscape.errors.Terminated`),
    put back at the end. Python runs a handler between bytecodes only, so a
    rank blocked in a C call (a rendezvous, a collective whose peer is gone)
    ignored SIGTERM: a ``timeout`` did nothing, and torchrun killed it after
    30 s without a word. Under torchrun (WORLD_SIZE > 1) a thread woken by
    the signal (``signal.set_wakeup_fd``) gives the main thread
    :data:`STOP_GRACE` seconds to meet it, then says the command's line
    itself and ends the process with status 143. Once the main thread has
    met one, the process is ending its own way and the thread stops
    watching; it never acts after the command is over. Ctrl-C keeps
    Python's own handling (or its being ignored)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # handlers can be set there only
        yield
        return
    met = threading.Event()  # the main thread has met a SIGTERM
    over = threading.Event()  # the command is over: the thread must not act

    def terminate(signum, frame):
        met.set()
        on_terminate(signum, frame)

    previous = signal.signal(signal.SIGTERM, terminate)
    pipe = wakeup = thread = None
    try:
        if world_size(strict=False) > 1:
            pipe = os.pipe()
            os.set_blocking(pipe[1], False)
            wakeup = signal.set_wakeup_fd(pipe[1], warn_on_full_buffer=False)
            thread = threading.Thread(target=_watch_stops, args=(pipe[0], met, over), name="landscape-stops",
                                      daemon=True)
            thread.start()
        yield
    finally:
        over.set()
        if pipe is not None:
            signal.set_wakeup_fd(wakeup)
            os.close(pipe[1])  # the thread's read returns: it ends
            thread.join(timeout=1.0)
            os.close(pipe[0])
        if previous is not None:  # None: a handler set outside Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous)


def _watch_stops(read: int, met, over) -> None:
    """:func:`_stops_met`'s thread: on the first SIGTERM, wait :data:`STOP_GRACE` seconds for the main thread
    to meet it; if it has not, and the command is not over, say so and end the process."""
    import signal

    while True:
        try:
            got = os.read(read, 64)
        except OSError:
            return
        if not got or over.is_set() or met.is_set():  # the command is over, or ending its own way
            return
        if signal.SIGTERM not in got:
            continue
        if over.wait(STOP_GRACE) or met.is_set():
            return
        rank = launch_rank(strict=False)
        os.write(2, f"{PROG}: rank {rank}: terminated while blocked in a call that did not return within "
                    f"{STOP_GRACE:g} s (waiting for another process?); files written so far are kept\n".encode())
        os._exit(143)


def _reopen_closed_streams() -> None:
    """Standard output or error closed by the shell (``2>&-``): Python sets
    ``sys.stderr`` to None, so the command's first message or progress
    check failed (exit 1, nothing said, nothing written), and the next file
    opened would have taken descriptor 2 (C libraries' warnings written into
    it). Each such stream is pointed at /dev/null."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "w", closefd=False))


def main(argv: Sequence[str] | None = None) -> int:
    _reopen_closed_streams()
    with _stops_met():
        status = _main(argv)
    _end_on_stop(status)
    return status


def _end_on_stop(status: int) -> None:
    """As the command (not a Python program calling ``main``), once its work
    is done: a SIGTERM in the interpreter's teardown (1-3 s on a loaded
    machine; a job's time running out just then) killed the process by the
    signal, without a word, though every file was written. It now ends the
    process at once with the command's own status, its output flushed first."""
    import signal
    import threading

    from landscape._startup import started_as_command

    if not started_as_command() or threading.current_thread() is not threading.main_thread():
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # a pipe gone, a stream closed
            pass

    def end(signum: int, frame: object) -> None:
        os._exit(status if isinstance(status, int) else 1)

    signal.signal(signal.SIGTERM, end)


def _main(argv: Sequence[str] | None) -> int:
    status = None  # the command's own: not 0, it has said why it stopped
    try:
        try:
            args = parse(build_parser(), argv)
        except KeyboardInterrupt as stop:
            from landscape._startup import stopped_while_starting

            return stopped_while_starting(stop)
        args.failed_alone = False
        try:
            from landscape.checkpoint import folder_locks

            with folder_locks():  # --out is this process's while the command runs
                status = _run_command(args)
                return status
        except BaseException:
            # An unexpected error (a bug, a failing user model) may be this rank's alone: waiting at the
            # final barrier while the others sit in another collective would hang the job without a word.
            # Its traceback is printed and the rank exits; torchrun then stops the others.
            args.failed_alone = True
            raise
        finally:
            if getattr(args, "stranded", False):
                _abandon_process_group()
            _leave_process_group(wait=not args.failed_alone)
    except KeyboardInterrupt as stop:  # _run_command reports its own: this one came while leaving the group
        word, stopped = stop_words(stop)
        if not status:  # (a rank that has said why it stopped, stopped by torchrun as it leaves: quiet)
            print(f"{PROG}: {word} while waiting for the other processes to finish; files written so far are kept",
                  file=sys.stderr)
        return stopped


BAD_INPUT_WAIT_S = 20.0  # how long a rank that met bad input waits for the others to meet it too


def _joined_group() -> bool:
    """Whether this process is one of a torchrun job's, its process group joined."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_ranks_end_within(seconds: float) -> bool:
    """Whether every rank reaches this barrier within ``seconds`` (each met the same bad input); False when
    some do not (they went on, or sit in a collective this rank left: it met the bad input alone)."""
    import datetime

    import torch.distributed as dist

    try:
        dist.barrier(async_op=True).wait(timeout=datetime.timedelta(seconds=seconds))
        return True
    except RuntimeError:  # timed out, or a rank gone
        return False


def _abandon_process_group() -> None:
    """A rank left with a barrier the others never reached (bad input it met alone) exits at once, with
    status 2 and its output flushed: closing the group would wait on that barrier."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)


def _leave_process_group(wait: bool = True) -> None:
    """Under torchrun: wait for every rank, then close the group (a rank that
    exits with it open can be aborted by gloo). A rank that failed on its own
    (a full disk, out of memory) does not wait: the others may be blocked in
    a collective it will never join, and its exit makes torchrun stop them."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if wait:
                dist.barrier()
        except RuntimeError as e:  # a rank gone while this one waited at the end: its own work is done
            gone = _peer_stopped(e)
            if not gone:
                raise
            print(f"{PROG}: rank {dist.get_rank()}: another process of this job stopped ({gone.lower()}) while this "
                  f"one waited for it at the end; this process's work is done", file=sys.stderr)
        finally:
            # Objects that still hold the group (a DistributedDataParallel wrapper in a reference cycle
            # of a task's closures) are freed now, while the interpreter is whole: freed during its
            # teardown, gloo's threads were seen to abort the process ("terminate called without an
            # active exception") after its work was done.
            gc.collect()
            dist.destroy_process_group()


# Commands that share their work out under torchrun; the others would run
# whole on every rank and write the same files, so they refuse.
DISTRIBUTED = ("train", "connect", "swa", "fge", "snapshots", "simplex", "curve", "swag", "plane", "rays", "width", "vi",
               "vi-eval", "vi-connect")


def _stdout_closed() -> bool:
    """Whether standard output is a pipe nobody reads any more; if so it is pointed at /dev/null, so that
    the interpreter's last flush does not print the same error again."""
    import select

    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        closed = any(event & select.POLLERR for _, event in poll.poll(0))  # a pipe's reader gone: POLLERR
    except (AttributeError, OSError, ValueError):  # not a file (a captured stream)
        return False
    if closed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return closed


def _run_command(args: argparse.Namespace) -> int:
    rank, world = launch_rank(strict=False), world_size(strict=False)
    where = f"rank {rank}: " if world > 1 else ""  # for failures that may be one rank's own
    try:
        launch_rank()  # a RANK or WORLD_SIZE that is not a whole number: one line
        if world > 1 and args.command not in DISTRIBUTED and args.command != "models":
            stray = "" if "MASTER_ADDR" in os.environ else f"; WORLD_SIZE={world} is set here: unset it"
            raise UserError(f"'{args.command}' runs on one process; start it without torchrun "
                            f"(under torchrun: {', '.join(DISTRIBUTED)}){stray}")
        return args.func(args)
    except UserError as e:
        if e.rank_local:  # met by some ranks only: each says it, and none waits for the others
            args.failed_alone = True
            print(f"{PROG}: error: {where}{e}", file=sys.stderr)
            return 2
        if rank == 0:  # bad input is the same on every rank: say it once
            print(f"{PROG}: error: {e}", file=sys.stderr)
        if _joined_group():
            # Each rank waits for the others a while, not for ever: one that met it alone (a check of what
            # its own process built) would wait at the end while the others sit in a collective it never joins
            if not _all_ranks_end_within(BAD_INPUT_WAIT_S):
                if rank != 0:  # this rank's alone: said, and its exit makes torchrun stop the others
                    print(f"{PROG}: error: {where}{e}", file=sys.stderr)
                args.failed_alone = args.stranded = True  # its barrier left pending: leaving would wait for it
        return 2
    except BrokenPipeError as e:
        if _stdout_closed():  # piped into a reader that stopped (| head): quiet, as other tools are
            return 141  # 128 + SIGPIPE
        args.failed_alone = True
        print(f"{PROG}: error: {where}{e.strerror or e}", file=sys.stderr)  # another pipe: a process group's
        return 2
    except OSError as e:  # unwritable --out, full disk, ... (may be one rank's own)
        args.failed_alone = True
        print(f"{PROG}: error: {where}{e.filename or ''}: {e.strerror or e}".replace(": : ", ": "), file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError (CUDA), the CPU allocator's failure, numpy's, cuBLAS's
        gone = _peer_stopped(e) if world > 1 else None
        if gone:  # another rank died (killed, out of memory): its connection closed under a collective
            args.failed_alone = True
            print(f"{PROG}: {where}another process of this job stopped ({gone.lower()}); "
                  f"{_kept(args) or 'nothing was written'}", file=sys.stderr)
            return 2
        if not is_out_of_memory(e):
            raise
        args.failed_alone = True
        from landscape.data import READING_DATA

        advice = ("while reading the dataset, which is held in memory whole: a machine with more memory, or a "
                  "smaller dataset" if getattr(e, READING_DATA, False) else _out_of_memory_advice(args))
        print(f"{PROG}: error: {where}out of memory ({_allocation(e)}); {advice}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
        # Under torchrun a signal may reach one rank only (a scheduler, a kill): the others sit in
        # a collective, so this rank does not wait for them at the final barrier; torchrun stops them.
        args.failed_alone = True
        word, status = stop_words(stop)
        kept = _kept(args)
        if kept is None:
            print(f"{PROG}: {where}{word} before anything was written to {args.out}", file=sys.stderr)
        else:
            print(f"{PROG}: {where}{word}; {kept}", file=sys.stderr)
        return status


def _kept(args: argparse.Namespace) -> str | None:
    """What a stopped command keeps, for its last line, with how to go on;
    None when it wrote nothing to its --out."""
    from landscape.checkpoint import wrote_into

    out = getattr(args, "out", None)
    if out is not None and not wrote_into(out):
        return None
    if hasattr(args, "resume"):
        done = _done_so_far(Path(out), getattr(args, "epochs", None),
                            "networks" if args.command == "sharpness" else "points") if out is not None else None
        if done is None and out is not None and _only_config(Path(out)):  # its settings, no result yet
            return "nothing was computed yet (only config.json was written) — rerun with --resume to start it"
        return f"files written so far are kept{done or ''} — rerun with --resume to continue"
    if args.command == "demo":
        return "files written so far are kept — rerun the same command: finished steps are reused"
    return "files written so far are kept"


def _only_config(out: Path) -> bool:
    """Whether a stopped command's folder holds nothing but its config.json (and lock files)."""
    from landscape.checkpoint import LOCK

    try:
        return {p.name for p in out.rglob("*") if p.name != LOCK} == {"config.json"}
    except OSError:
        return False


def _done_so_far(out: Path, epochs: object, unit: str = "points") -> str | None:
    """How far a stopped command got, from what its folder holds, for its
    last line: " (epoch 2 of 4 in last.pt)", " (7 of 9 points)" (each store's
    where it keeps several), " (epoch 3 of 5 in vertex-2/last.pt)" (simplex:
    the latest phase); None when that cannot be told (never raises: it is
    said while stopping)."""
    import torch

    def epoch_in(last: Path) -> str | None:  # memory-mapped: only the few bytes read are loaded
        epoch = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["train_state"]["epoch"]
        of = f" of {epochs}" if isinstance(epochs, int) else ""
        return f" (epoch {epoch}{of} in {last.relative_to(out)})" if isinstance(epoch, int) else None

    try:
        if (out / "last.pt").exists():
            return epoch_in(out / "last.pt")
        from landscape.sweep import stores_done

        counts = stores_done(out, unit)
        if counts:
            return f" ({'; '.join(counts)})"
        # simplex: a vertex a folder (ESPRO: in a component's folder)
        phases = sorted(out.rglob("last.pt"), key=lambda p: p.stat().st_mtime)
        return epoch_in(phases[-1]) if phases else None
    except Exception:  # noqa: BLE001 - a folder being written, or torn: the line goes without
        return None


PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Connection was likely closed")


def _peer_stopped(e: BaseException) -> str | None:
    """How a collective said it failed because another rank of the job is gone (gloo's and the TCP store's
    words for it), or None when it did not."""
    return next((words for words in PEER_GONE if words in str(e)), None)


def _allocation(e: BaseException) -> str:
    """The failed allocation's size when the allocator says it, else its message's first line."""
    import re

    found = re.search(r"allocate (\d+) bytes", str(e))
    if found:
        return f"an allocation of {int(found.group(1)) / 2 ** 30:.3g} GiB failed"
    found = re.search(r"Unable to allocate ([\d.]+ [KMGTPE]?i?B)", str(e))  # numpy's words
    if found:
        return f"an allocation of {found.group(1)} failed"
    return first_line(e)[:120]


# Options that set how much a command computes: a huge one may be why memory ran out.
_SIZE_OPTIONS = ("points", "grid", "directions", "steps", "samples", "bends", "t_samples", "vertices", "iters",
                 "chains")


def _out_of_memory_advice(args: argparse.Namespace) -> str:
    """What to change after running out of memory, given the command's options.
    A resume must keep every setting of its sweep or run but the points per
    pass; the others need a fresh --out. Nothing stored yet: say so, and
    name the size options given."""
    population = getattr(args, "bn_stats", None) == "population"  # the whole training set as one batch:
    fresh = [o for o, ok in (("--bn-stats batches", getattr(args, "bn_stats", "batches") != "batches"),
                             ("a smaller --batch-size", hasattr(args, "batch_size") and not population)) if ok]
    sizes = [f"--{name.replace('_', '-')}" for name in _SIZE_OPTIONS if isinstance(getattr(args, name, None), int)
             and not isinstance(getattr(args, name), bool)]
    out = getattr(args, "out", None)
    stored = out is not None and Path(out).is_dir() and any(
        (Path(out) / f).exists() for f in ("sweep.partial.npz", "last.pt"))
    if hasattr(args, "resume") and not stored:
        return ("nothing was stored yet: " + (f"check the sizes asked for ({', '.join(sizes)}), or rerun" if sizes
                                               else "rerun")
                + (f" with {' or '.join(fresh)}" if fresh else " on a machine with more memory"))
    if hasattr(args, "resume"):
        advice = "what was finished is kept: rerun with --resume"
        if hasattr(args, "points_per_pass"):
            advice += " and a smaller --points-per-pass"
        return advice + (f", or in another --out with {' or '.join(fresh)}" if fresh else "")
    if hasattr(args, "points_per_pass"):
        fresh.insert(0, "a smaller --points-per-pass")
    return f"rerun with {' or '.join(fresh)}" if fresh else "rerun on a machine with more memory"


if __name__ == "__main__":
    sys.exit(main())
