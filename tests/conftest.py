"""Shared test helpers."""

import dataclasses
import signal

import pytest
import torch

from landscape.data import load_dataset

# A suite started in the background of a script (`bash .ci/run &`) inherits an ignored Ctrl-C, and so would
# every command it starts: the tests that stop one with SIGINT need Python's own handling, which a handled
# (not ignored) signal gives the processes started from here.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def fail_at_pass(monkeypatch, n: int, error: BaseException) -> list:
    """The sweep's n-th pass from now raises ``error`` (as an interruption or running out of memory would), the
    ones before it run; returns the calls' record."""
    from landscape import sweep as sweep_module

    real, calls = sweep_module.evaluate_points, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise error
        return real(*a, **kw)

    monkeypatch.setattr(sweep_module, "evaluate_points", failing)
    return calls


@torch.no_grad()
def papers_update_bn(loader, model) -> None:
    """The papers' batch-norm re-estimation (dnn-mode-connectivity's ``utils.update_bn``, swa's and
    swa_gaussian's ``bn_update``), written out as they write it: the model in train mode, every batch-norm
    layer reset, then each batch with momentum b / (n + b), so each batch weighs by its size. (torch's
    ``swa_utils.update_bn`` uses momentum None, which weighs every batch alike.) Modes and momenta restored."""
    was = model.training
    model.train()
    momenta = {m: m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    for m in momenta:
        m.reset_running_stats()
    n = 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        b = x.shape[0]
        for m in momenta:
            m.momentum = b / (n + b)
        model(x)
        n += b
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.train(was)


@pytest.fixture
def poison_step(monkeypatch):
    """``poison_step(n)``: the n-th SGD step from now (1-based) leaves its first
    parameter NaN after updating it, as an overflowing update would; the loss
    that step saw was finite, so only a check of the weights can notice."""
    original = torch.optim.SGD.step

    def arm(n: int) -> None:
        count = [0]

        def step(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            count[0] += 1
            if count[0] == n:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("nan"))
            return result

        monkeypatch.setattr(torch.optim.SGD, "step", step)

    return arm


@pytest.fixture(scope="module")
def small_digits():
    """The digits with their first 400 training images: the small networks of the
    averaging, SWAG and subspace tests train on it in seconds."""
    d = load_dataset("digits")
    return dataclasses.replace(d, x_train=d.x_train[:400], y_train=d.y_train[:400])


# Subcommands that take the data options.
_DATA_COMMANDS = {"train", "connect", "curve", "plane", "rays", "width", "swa", "fge", "snapshots", "swag", "subspace",
                  "vi", "vi-eval", "vi-connect", "ensemble", "sharpness", "simplex"}


def naming_digits(argv):
    """``argv`` for a run on checkpoints trained on ``small_digits`` (the digits'
    first 400 training images, passed from Python): the command line names no
    such data, so it is told to evaluate on the digits (all of them), as a user
    would be told to by the refusal."""
    argv = [str(a) for a in argv]
    return argv + ["--dataset", "digits"] if argv and argv[0] in _DATA_COMMANDS else argv
