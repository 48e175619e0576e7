"""The ``rcenp`` command: train, eval, data fetch, demo (and detect, attack and reproduce, from their packages).

Every anticipated failure (bad data, a bad checkpoint, a bad argument) ends with one error line
and exit status 2, never a traceback, prefixed by the command as argparse's own errors are:
``rcenp attack: error: ...``, ``rcenp data fetch: error: ...``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import difflib
import os
import re
import signal
import sys
import threading

from rcenp import __version__
from rcenp.argtypes import count, folder, integer, nonnegative, positive
from rcenp.backend import DEVICE_HELP, DeviceError
from rcenp.checkpoint import CheckpointError
from rcenp.data import DATASETS, DataError
from rcenp.data.datasets import DATA_DIR_DEFAULT, on_fallback

QUICK_HELP = ("quick = ResNet-14, 5,600 steps of batch 64 with lr 0.1/0.01/0.001 switching at 50%/75% "
              "of the run; measured on 2 CPU cores: RCE on MNIST reached 0.53% test error in 12.5 minutes")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage block is one --help away), and an
    unrecognized option named before any missing required argument: with ``--atack bim`` the
    missing ``--attack`` is the typo's consequence, not the news."""

    def __init__(self, *args, **kwargs):
        # no abbreviations: `--ep 0.2` after `--eps 0.1` silently replaced it; now it is unrecognized
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def parse_known_args(self, args=None, namespace=None):
        self._seen = list(sys.argv[1:] if args is None else args)  # for error(); subparsers pass theirs
        return super().parse_known_args(args, namespace)

    def error(self, message):
        if message.startswith("the following arguments are required"):
            unknown = self.unrecognized(getattr(self, "_seen", []))
            if unknown:
                message = self.unrecognized_message(unknown)
        message = self.before_the_command(message) or self.suggest_choice(message)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def unrecognized_message(self, unknown) -> str:
        message = f"unrecognized argument{'s' if len(unknown) > 1 else ''}: {' '.join(unknown)}"
        close = difflib.get_close_matches(unknown[0].split("=", 1)[0], self._option_string_actions, 1)
        return message + (f" (did you mean {close[0]}?)" if close else "")

    def before_the_command(self, message: str) -> str | None:
        """For ``rcenp --eps 3``: an unknown option before the command made argparse take its value
        for the command ("invalid choice: '3'"); name the option and where options go instead."""
        match = re.match(r".*invalid choice: (['\"]?)(.*?)\1 \(choose from", message, re.S)
        seen = getattr(self, "_seen", [])
        if not match or match[2] not in seen:
            return None
        unknown = self.unrecognized(seen[:seen.index(match[2])])
        if not unknown:
            return None
        plural = "s" if len(unknown) > 1 else ""
        return (f"unrecognized argument{plural} before the command: {' '.join(unknown)} "
                f"(a command's options follow it: {self.prog} COMMAND {unknown[0]} ...)")

    @staticmethod
    def suggest_choice(message: str) -> str:
        """argparse's "invalid choice: 'evl' (choose from ...)" with the closest choice named, as for options."""
        match = re.fullmatch(r"(.*invalid choice: )(['\"]?)(.*?)\2 \(choose from (.*)\)", message, re.S)
        if not match:
            return message
        choices = [c.strip().strip("'\"") for c in match[4].split(",")]
        close = difflib.get_close_matches(match[3], choices, 1)
        return message + (f" (did you mean {close[0]}?)" if close else "")

    def unrecognized(self, args) -> list:
        """The options in ``args`` that this parser does not know (exact or ``--opt=value``; no
        abbreviations: ``allow_abbrev`` is off); values that look like negative numbers and
        everything after ``--`` are not options."""
        known = self._option_string_actions
        out = []
        for arg in args:
            if arg == "--":
                break
            if not arg.startswith("-") or arg == "-" or re.fullmatch(r"-\d+|-\d*\.\d+", arg):
                continue
            name = arg.split("=", 1)[0]
            if name in known or (not name.startswith("--") and name[:2] in known):
                continue
            out.append(arg)
        return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rcenp", description="Reverse cross-entropy training and adversarial "
                                     "detection on NumPy/CuPy (Pang et al., NeurIPS 2018).")
    parser.add_argument("--version", action="version", version=f"rcenp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")  # none given: main() lists them

    t = sub.add_parser("train", help="train a ResNet with CE or RCE", description=(
        "Train the authors' pre-activation ResNet with cross-entropy or reverse cross-entropy. "
        "paper = the protocol's schedule (MNIST/Fashion-MNIST 20,000 steps, CIFAR-10 90,000 steps, batch 128, "
        "momentum 0.9, weight decay 2e-4 on kernels); " + QUICK_HELP + "; subset = the paper's schedule in "
        "epochs for the training images present (steps and lr boundaries scaled by their share of the "
        "published training set: 9,153 steps on the 5,085-image CIFAR-10 subset)."))
    t.add_argument("--dataset", choices=DATASETS,
                   help="the data set to train on (required, but for --resume without it: the run's own)")
    t.add_argument("--objective", choices=["ce", "rce"],
                   help="ce = cross-entropy, rce = reverse cross-entropy (the paper's; required as --dataset)")
    t.add_argument("--depth", type=integer, help="6n+2: 32 (default for paper), 56, 14 (quick), ...")
    t.add_argument("--steps", type=count,
                   help="override the preset's number of steps; the lr switches move with it, at the same "
                        "fractions of the run")
    t.add_argument("--batch-size", type=count, help="default: 128 (paper), 64 (quick)")
    t.add_argument("--out", required=True, type=folder,
                   help="run directory (checkpoints, train.log, and at the end metrics.json: test error, training seconds)")
    t.add_argument("--preset", choices=["paper", "quick", "subset"],
                   help="the schedule (described above; default paper)")
    t.add_argument("--schedule-scale", type=positive(), metavar="F",
                   help="an Fx schedule: the paper/subset preset's steps and lr boundaries times F (default 1; "
                        "the CIFAR-10-subset runs in scripts/runs.py use 2)")
    t.add_argument("--seed", type=nonnegative(integer),
                   help="seeds the initial weights, the batch order and the augmentation (default 0)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the run directory's last checkpoint: with the settings it records when "
                        "--dataset and --objective are left out (`rcenp train --out RUN --resume`), else with "
                        "the settings given, which must be the run's")
    t.add_argument("--checkpoint-every", type=count, metavar="STEPS",
                   help="steps between checkpoints (default 1000; quick: 700)")
    t.add_argument("--stop-at", type=count, metavar="STEP",
                   help="checkpoint after STEP and stop (continue later with --resume)")
    t.add_argument("--train-subset", type=count, help="use only the first N training images")
    t.add_argument("--activation", choices=["leaky_relu", "relu"],
                   help="default leaky_relu (slope 0.1, as in the authors' code)")
    t.add_argument("--data-dir", help=f"data root ({DATA_DIR_DEFAULT})")
    t.add_argument("--device", choices=["cpu", "cuda"], help=DEVICE_HELP)

    e = sub.add_parser("eval", help="test error of a run directory or shipped model")
    e.add_argument("model", help="run directory or shipped model name")
    e.add_argument("--data-dir", help=f"data root holding the model's test set ({DATA_DIR_DEFAULT})")
    e.add_argument("--sample", action="store_true",
                   help="use the embedded 1,000-image MNIST sample instead of a data root (not with --data-dir)")
    e.add_argument("--device", choices=["cpu", "cuda"], help=DEVICE_HELP)
    e.add_argument("--json", action="store_true", help="print the result as one JSON line instead of a table")

    ls = sub.add_parser("models", help="list the shipped models: data set, depth, objective, test error, detector")
    ls.add_argument("--json", action="store_true", help="one JSON object per model, one per line")

    d = sub.add_parser("data", help="data sets")
    dsub = d.add_subparsers(dest="data_command", metavar="COMMAND")  # none given: main() lists them
    f = dsub.add_parser("fetch", help="download a data set from its public mirrors, with checksums")
    f.add_argument("name", choices=DATASETS)
    f.add_argument("--data-dir", help="data root to download into (default: $RCENP_DATA, else the per-user cache)")

    from rcenp.attacks.cli import add_parser as add_attack_parser
    from rcenp.detect.cli import add_parser as add_detect_parser

    from rcenp.reproduce.cli import add_parser as add_reproduce_parser

    add_detect_parser(sub)
    add_attack_parser(sub)
    add_reproduce_parser(sub)

    m = sub.add_parser("demo", help="the main job: evaluate the shipped models (or a short engine demo)",
                       description="Evaluate every shipped model and its detector, then attack the MNIST ones "
                       "with BIM. Only when no model is shipped: a short engine demo instead (--steps).")
    m.add_argument("--data-dir", help=f"data root ({DATA_DIR_DEFAULT}); without "
                   "MNIST there, the embedded 1,000-image sample; models whose data is missing are skipped")
    m.add_argument("--device", choices=["cpu", "cuda"], help=DEVICE_HELP)
    m.add_argument("--steps", type=count,
                   help="only for the engine demo, which runs when no model is shipped: SGD steps on random "
                   "data (default 5); refused when models are shipped")
    m.add_argument("--json", action="store_true", help="one JSON line per model instead of tables")
    parser.commands = dict(sub.choices)  # for main(): "choose a command", errors from the command's parser
    parser.nested = {"data": (d, "data_command", dict(dsub.choices))}
    return parser


SETTINGS = ("depth", "steps", "batch_size", "preset", "schedule_scale", "seed", "train_subset", "activation")


@contextlib.contextmanager
def terminate_as_exit():
    """SIGTERM raises SystemExit(143) inside the block, so that a run stopped outside its held
    training steps (the final evaluation) unwinds and says so like one stopped inside them
    (``checkpoint.HeldSignals`` holds it there until the step is saved). A SIGTERM that was
    ignored stays ignored; the previous handler comes back after the block."""
    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_train(args) -> int:
    from rcenp.train import preset_config, recorded_config, train

    if args.dataset is None and args.objective is None and args.resume:  # the run's own settings
        given = [f"--{name.replace('_', '-')}" for name in SETTINGS if getattr(args, name) is not None]
        if given:
            raise ValueError(f"--resume without --dataset and --objective continues the run as it records; "
                             f"leave out {', '.join(given)} too, or give the whole command")
        config = recorded_config(args.out, checkpoint_every=args.checkpoint_every)
    elif args.dataset is None or args.objective is None:
        raise ValueError("train needs --dataset and --objective (or neither, with --resume, to continue a run "
                         "with the settings it records)")
    else:
        overrides = dict(objective=args.objective, depth=args.depth, steps=args.steps, batch_size=args.batch_size,
                         seed=0 if args.seed is None else args.seed, checkpoint_every=args.checkpoint_every,
                         train_subset=args.train_subset, activation=args.activation)
        preset = args.preset or "paper"
        train_size = None
        if preset == "subset":
            from rcenp.data import load

            train_size = args.train_subset or len(load(args.dataset, "train", args.data_dir))
        config = preset_config(preset, args.dataset, train_size, args.schedule_scale or 1.0, **overrides)
    with terminate_as_exit():
        metrics = train(config, args.out, data_root=args.data_dir, resume=args.resume, device=args.device,
                        command=" ".join(["rcenp"] + sys.argv[1:]), stop_at=args.stop_at)
    if metrics is None:
        return 0
    print(json.dumps({k: metrics[k] for k in ("test_error", "n_test", "errors", "dataset", "objective", "depth")}))
    return 0


def cmd_eval(args) -> int:
    from rcenp.data import load, load_sample
    from rcenp.models import load as load_model
    from rcenp.models.registry import unfinished
    from rcenp.progress import counter
    from rcenp.train import evaluate

    if args.sample and args.data_dir:
        raise ValueError("--sample and --data-dir exclude each other: --sample tests on the embedded MNIST "
                         "sample, --data-dir on the test set in that data root")
    model, manifest = load_model(args.model, args.device)
    dataset = manifest["config"]["dataset"]
    if args.sample and dataset != "mnist":
        raise ValueError("--sample is the MNIST test sample; this model was trained on " + dataset)
    try:
        test = load_sample() if args.sample else load(dataset, "test", args.data_dir)
    except DataError as exc:
        if dataset != "mnist":
            raise
        raise DataError(f"{exc}; or pass --sample to use the embedded 1,000-image MNIST sample") from None
    result = evaluate(model, test.images, test.labels, progress=counter("test images", f"evaluating {args.model}"))
    result.update(model=str(args.model), test_set=test.describe())
    if note := unfinished(args.model, manifest):  # after any error, which stays the one line on stderr
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        from rcenp.demo import eval_table

        print(eval_table(result))
    return 0


def cmd_models(args) -> int:
    from rcenp.models.registry import model_info, models_table, shipped_models

    infos = [model_info(name) for name in shipped_models()]
    print("\n".join(json.dumps(i) for i in infos) if args.json else models_table(infos) if infos else "no shipped models")
    return 0


def cmd_data(args) -> int:
    from rcenp.data.fetch import fetch

    def progress(name, done, total):
        if total:
            sys.stderr.write(f"\r{name}: {done * 100 // total}%")
            sys.stderr.flush()

    paths = fetch(args.name, args.data_dir, progress=progress)
    sys.stderr.write("\n")
    for p in paths:
        print(p)
    return 0


def cmd_demo(args) -> int:
    from rcenp.models.registry import shipped_models

    if args.data_dir and not os.path.isdir(args.data_dir):  # else every model would fall back or be skipped
        raise DataError(f"--data-dir {args.data_dir}: no such folder")
    shipped = shipped_models()
    if shipped and args.steps is not None:
        raise ValueError(f"--steps applies only to the engine demo, which runs when no model is shipped; "
                         f"{len(shipped)} model{'s are' if len(shipped) > 1 else ' is'} shipped here, so "
                         "`rcenp demo` evaluates them (leave out --steps)")
    from rcenp import demo

    if shipped:
        return demo.run_demo(shipped, args.data_dir, args.device, as_json=args.json)
    return demo.engine_demo(args.steps or 5, args.device)


def cmd_detect(args) -> int:
    from rcenp.detect.cli import cmd_detect as run

    return run(args)


def cmd_attack(args) -> int:
    from rcenp.attacks.cli import cmd_attack as run

    return run(args)


def cmd_reproduce(args) -> int:
    from rcenp.reproduce.cli import cmd_reproduce as run

    return run(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "data": cmd_data, "demo": cmd_demo, "detect": cmd_detect,
            "models": cmd_models, "attack": cmd_attack, "reproduce": cmd_reproduce}


def error_text(exc: BaseException) -> str:
    """An error for a person: an OSError as 'PATH: what went wrong' (not '[Errno 17] File exists: ...')."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()}" if exc.filename else exc.strerror
    return str(exc) or exc.__class__.__name__


def reader_gone() -> int:
    """stdout's reader is gone (``rcenp models | head``): point stdout at /dev/null, so that the
    flush at exit does not fail a second time, → 141 (128 + SIGPIPE, what a shell reports)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)
    return 141


def flushed(status: int) -> int:
    """``status`` once stdout is flushed (a buffered stdout, without PYTHONUNBUFFERED, writes at
    exit, out of reach of main's handler); ``reader_gone()`` where that finds the reader gone."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return reader_gone()
    return status


INTERRUPTED_HINTS = {"reproduce": " (finished cells are kept: run it again with --resume to go on, or with "
                                  "--report for the report of those)"}


def main(argv=None) -> int:
    try:
        parser = build_parser()
        args, extras = parser.parse_known_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the command line is read: nothing begun, nothing to say but that
        sys.stderr.write("rcenp: interrupted\n")
        return 130
    if args.command is None and not extras:
        parser.error(f"choose a command: {', '.join(parser.commands)}")
    command_parser = parser.commands.get(args.command, parser)
    if args.command in parser.nested:
        nested, dest, choices = parser.nested[args.command]
        command_parser = choices.get(getattr(args, dest), nested)
        if getattr(args, dest) is None and not extras:
            nested.error(f"choose a command: {', '.join(choices)}")
    if extras:  # named by the parser of the command they were given to, with its --help
        command_parser.error(command_parser.unrecognized_message(extras))
    said = set()

    def say_once(message):  # the data came from elsewhere than the --data-dir given: tell, once
        if message not in said:
            said.add(message)
            sys.stderr.write(message + "\n")

    try:
        with on_fallback(say_once):
            return flushed(COMMANDS[args.command](args))
    except BrokenPipeError:  # `rcenp models | head`: the reader is gone, as for any Unix tool
        return reader_gone()
    except (DataError, CheckpointError, DeviceError, ValueError, OSError) as exc:
        sys.stderr.write(f"{command_parser.prog}: error: {error_text(exc)}\n")  # as the parser's errors read
        return flushed(2)
    except KeyboardInterrupt:
        sys.stderr.write(f"{command_parser.prog}: interrupted{INTERRUPTED_HINTS.get(args.command, '')}\n")
        return flushed(130)
    except SystemExit as exc:  # SIGTERM held until the step in work was saved (checkpoint.HeldSignals.stop)
        if exc.code == 128 + signal.SIGTERM:
            sys.stderr.write(f"{command_parser.prog}: terminated{INTERRUPTED_HINTS.get(args.command, '')}\n")
        raise


if __name__ == "__main__":
    sys.exit(main())
