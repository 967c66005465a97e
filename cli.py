"""The `landscape` command line: one parser, subcommands, shared option groups.

Each subcommand parses its options, calls one library function and reports.
User errors (bad names, files, values) print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from landscape.errors import UserError

PROG = "landscape"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


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
def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded, default), mnist, fashion-mnist, cifar10, cifar100, npz, synthetic")
    g.add_argument("--data-path", default=None,
                   help="folder (mnist, cifar) or .npz file holding the dataset")
    g.add_argument("--val-size", type=int, default=0,
                   help="carve this many training images out as a validation set, used instead of the test set")
    g.add_argument("--data-seed", type=int, default=0,
                   help="seed of the validation split and of synthetic data (keep it equal across endpoints)")
    g.add_argument("--synthetic-shape", type=_int_tuple, default=(3, 32, 32), metavar="C,H,W",
                   help="input shape of --dataset synthetic (default 3,32,32)")
    g.add_argument("--synthetic-classes", type=int, default=10, help="classes of --dataset synthetic")
    g.add_argument("--synthetic-size", type=_int_tuple, default=(5000, 1000), metavar="TRAIN,TEST",
                   help="train and test sizes of --dataset synthetic (default 5000,1000)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="convnet",
                   help="a registered model (see 'landscape models') or package.module:factory")
    g.add_argument("--model-kwargs", type=_kv, nargs="*", default=[], metavar="K=V",
                   help="constructor options, e.g. width=64 or depth=56")


def add_optim_args(p: argparse.ArgumentParser, *, epochs: int = 20, lr: float = 0.05, wd: float = 5e-4) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--lr", type=float, default=lr, help="initial learning rate")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--wd", type=float, default=wd, help="weight decay")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--schedule", default="paper",
                   help="paper (constant, then linear decay to 1%% from 50%% to 90%% of training), cosine, constant")


def add_run_args(p: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", required=out_required, type=Path, metavar="DIR", help="folder for every file this run writes")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA; on CPU it helps only with AMX)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")
    g.add_argument("--save-every", type=int, default=0, metavar="N", help="keep a checkpoint every N epochs (0: only the last)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


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


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else None


def _format_run(name: str, s: dict[str, Any]) -> str:
    split = s.get("eval_split", "test")
    tag = "  [synthetic data]" if s.get("synthetic") else ""
    return (f"{name}: train loss {s['train_loss']:.4f}  train error {s['train_error']:.2f}%  "
            f"{split} nll {s['test_nll']:.4f}  {split} error {s['test_error']:.2f}%{tag}")


def cmd_train(args: argparse.Namespace) -> int:
    from landscape.train import train

    result = train(_train_config(args), args.out, resume=args.resume, progress=_progress(args), argv=sys.argv)
    print(_format_run(str(args.out), result.summary))
    print(f"checkpoint: {args.out / 'model.pt'}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from landscape.models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train two digits endpoints (seeds 1 and 2) and print their test errors."""
    from landscape.device import resolve_device
    from landscape.train import TrainConfig, load_data, train

    cfg = TrainConfig(dataset="digits", model="convnet", epochs=args.epochs, device=args.device)
    data = load_data(cfg, resolve_device(args.device))
    rows = []
    for name, seed in (("a", 1), ("b", 2)):
        print(f"training endpoint {name} (convnet on digits, seed {seed}, {cfg.epochs} epochs) ...", flush=True)
        started = (args.out / name / "last.pt").exists() or (args.out / name / "model.pt").exists()
        result = train(cfg, args.out / name, seed=seed, resume=started, data=data, progress=_progress(args))
        rows.append((name, seed, result.summary))
    print()
    print(f"{'endpoint':<10}{'seed':>6}{'train loss':>12}{'train err %':>13}{'test nll':>10}{'test err %':>12}")
    for name, seed, s in rows:
        print(f"{name:<10}{seed:>6}{s['train_loss']:>12.4f}{s['train_error']:>13.2f}{s['test_nll']:>10.4f}{s['test_error']:>12.2f}")
    print()
    for name, _, _ in rows:
        print(f"checkpoint: {args.out / name / 'model.pt'}")
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

    p = sub.add_parser("demo", help="the main job end to end on the embedded digits data",
                       description="Train two digits endpoints and print their test errors.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)
    return parser


def _version() -> str:
    from landscape import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable --out, full disk, ...
        print(f"{PROG}: error: {e.filename or ''}: {e.strerror or e}".replace(": : ", ": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; files written so far are kept — rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
