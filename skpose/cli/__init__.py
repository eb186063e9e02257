"""The ``skpose`` command line: from RELION files to RELION files.

Each subcommand is a thin call into the library; ``main(argv)`` returns the exit code.
Errors in the user's files or options print one line, ``skpose: error: ...``, and exit
with status 2, without a traceback; so does an output that cannot be written or would
replace one of the command's inputs (checked before any work; ``--force`` allows the
latter). SIGINT and SIGTERM end a command with one line and status 130 or 143; every
file is written atomically, so none is left half-written (see ``_safety``).

The paper's workflow in five commands::

    skpose simulate map.mrc --n 5000 --snr 1 --ctf --max-shift 3 --out sim/
    skpose split sim/particles.star --fraction 0.2 --out sim/
    skpose fit sim/train.star --volume map.mrc --out model.joblib
    skpose predict sim/rest.star --model model.joblib --out predicted.star
    skpose evaluate predicted.star sim/rest.star --volume map.mrc --out report/
    skpose reconstruct predicted.star --out map_new.mrc --half-maps

The conventional pipeline (global search + refinement), for comparison or labelling::

    skpose search particles.star --volume map.mrc --step 15 --out searched.star
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from skpose._threads import set_threads
from skpose.cli import _commands, _safety, _search

__all__ = ["main"]

_EXAMPLES = {
    "simulate": "skpose simulate map.mrc --n 10000 --snr 0.1 --ctf --max-shift 4 "
    "--out sim/",
    "split": "skpose split sim/particles.star --fraction 0.2 --out sim/",
    "fit": "skpose fit sim/train.star --volume map.mrc --out model.joblib "
    "--grid-w 0,0.4,0.8 --grid-lr 1e-4,1e-3",
    "predict": "skpose predict sim/rest.star --model model.joblib --out predicted.star",
    "evaluate": "skpose evaluate predicted.star sim/rest.star --volume map.mrc "
    "--symmetry D2 --out report/",
    "reconstruct": "skpose reconstruct predicted.star --out map.mrc --symmetry D7 "
    "--half-maps",
    "search": _search.EXAMPLE,
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``skpose fit: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_THREADS_HELP = (
    "torch threads (default: $OMP_NUM_THREADS when set, else the CPUs this process "
    "may use)"
)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _number(kind, minimum, *, strict: bool):
    """An argparse type: ``kind(text)``, finite and above ``minimum``."""
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what} {bound}, got {text!r}"
            ) from None
        above = value > minimum if strict else value >= minimum
        if not (math.isfinite(value) and above):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value

    return parse


_POSITIVE_INT = _number(int, 0, strict=True)
_POSITIVE = _number(float, 0, strict=True)
_NON_NEGATIVE = _number(float, 0, strict=False)


def _subparser(sub, name: str, help_text: str):
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {_EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--threads", type=_POSITIVE_INT, default=None, help=_THREADS_HELP)
    return p


def _add_simulate(sub) -> None:
    p = _subparser(sub, "simulate", "Simulate a RELION 3.1 particle set from a map.")
    p.add_argument("map", type=Path, help="cubic MRC map")
    p.add_argument(
        "--n", type=_POSITIVE_INT, default=1000, help="particles (default 1000)"
    )
    p.add_argument("--snr", type=_POSITIVE, default=None, help="default: noiseless")
    p.add_argument("--ctf", action="store_true", help="random defoci 1-2.5 um")
    p.add_argument(
        "--max-shift", type=_NON_NEGATIVE, default=0.0, help="pixels, < box / 2"
    )
    p.add_argument(
        "--pixel-size", type=_POSITIVE, default=None, help="A (default: map's)"
    )
    p.add_argument(
        "--frequencies",
        choices=["circle", "square"],
        default="circle",
        help="projector: RELION's Nyquist circle (default), or 'square', every "
        "image frequency: accurate for maps with power up to Nyquist",
    )
    p.add_argument("--poses", type=Path, help="draw poses from this STAR file")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, required=True, help="output folder")


def _add_split(sub) -> None:
    p = _subparser(
        sub, "split", "Split a STAR file into a training subset and the rest."
    )
    p.add_argument("particles", type=Path, help="STAR file")
    p.add_argument("--fraction", type=float, default=0.2, help="to train.star")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output folder")


def _add_fit(sub) -> None:
    p = _subparser(sub, "fit", "Train the orientation network on labelled particles.")
    p.add_argument("particles", type=Path, help="STAR file with poses")
    p.add_argument("--volume", type=Path, required=True, help="MRC map")
    p.add_argument("--out", type=Path, required=True, help="model file (.joblib)")
    p.add_argument("--w", type=float, default=0.8, help="QD weight (default 0.8)")
    p.add_argument("--grid-w", type=_floats, help="grid-search these w values")
    p.add_argument("--grid-lr", type=_floats, help="grid-search these rates")
    p.add_argument(
        "--cv", type=_number(int, 1, strict=True), default=3, help="grid-search folds"
    )
    p.add_argument("--lr", type=_POSITIVE, default=None)
    p.add_argument("--max-iter", type=_POSITIVE_INT, default=2000)
    p.add_argument("--batch-size", type=_POSITIVE_INT, default=None)
    p.add_argument("--box", type=_POSITIVE_INT, default=None, help="network input size")
    p.add_argument(
        "--architecture",
        choices=["auto", "vgg16", "small"],
        default="auto",
        help="auto: the paper's vgg16 on a GPU, our small network on a CPU",
    )
    p.add_argument("--symmetry", default=None, help="e.g. D2 (symmetric QD loss)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=_number(int, 0, strict=False), default=1)
    p.add_argument(
        "--simulate-from-map",
        type=_number(float, 0, strict=False),
        default=0.0,
        help="fraction of each batch simulated from the map (default 0: off)",
    )
    p.add_argument(
        "--fallback",
        choices=["search"],
        default=None,
        help="calibrate a confidence threshold on held-out particles; predict "
        "--refine then re-searches particles below it (global search + refinement)",
    )
    p.add_argument(
        "--recentre",
        action="store_true",
        help="estimate origins against the map's average projection and train on "
        "recentred particles (predict then recentres too)",
    )


def _add_predict(sub) -> None:
    p = _subparser(sub, "predict", "Predict poses and write them into a STAR file.")
    p.add_argument("particles", type=Path, help="STAR file")
    p.add_argument("--model", type=Path, required=True, help="from skpose fit")
    p.add_argument("--out", type=Path, required=True, help="STAR file to write")
    p.add_argument(
        "--refine",
        action="store_true",
        help="refine each pose locally against the map at the particles' box",
    )
    p.add_argument(
        "--volume",
        type=Path,
        default=None,
        help="the model's map, for --refine (default: the path recorded by fit)",
    )
    p.add_argument(
        "--hypotheses",
        type=int,
        choices=(1, 2, 4),
        default=1,
        help="with --refine: the network also sees each particle turned by quarter "
        "turns; the answer whose projection fits the image best is refined",
    )
    p.add_argument("--batch-size", type=_POSITIVE_INT, default=256)
    p.add_argument("--max-open-files", type=_POSITIVE_INT, default=32)
    p.add_argument(
        "--scheduler",
        default=None,
        help="dask scheduler address (tcp://host:8786): predict on its workers",
    )
    p.add_argument("--scheduler-timeout", type=_POSITIVE, default=10.0, help="seconds")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="the network's forward pass (bf16: see docs/gpu.md)",
    )


def _add_evaluate(sub) -> None:
    p = _subparser(sub, "evaluate", "Compare predicted poses with reference poses.")
    p.add_argument("predicted", type=Path, help="STAR file")
    p.add_argument("reference", type=Path, help="STAR file")
    p.add_argument("--symmetry", default="C1")
    p.add_argument("--volume", type=Path, help="MRC map: RMSE and projection panels")
    p.add_argument("--out", type=Path, required=True, help="report folder")


def _add_reconstruct(sub) -> None:
    p = _subparser(sub, "reconstruct", "Reconstruct a map from particles and poses.")
    p.add_argument("particles", type=Path, help="STAR file with poses")
    p.add_argument("--out", type=Path, required=True, help="MRC map to write")
    p.add_argument("--symmetry", default="C1")
    p.add_argument("--half-maps", action="store_true", help="also half maps + FSC")
    p.add_argument("--reference", type=Path, help="MRC map: FSC against it")
    p.add_argument("--no-ctf", action="store_true", help="ignore the CTF")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``skpose`` (one subparser per subcommand)."""
    parser = _Parser(
        prog="skpose",
        description="Cryo-EM particle orientations with a neural network.",
        epilog="\n".join(f"  {e}" for e in _EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_simulate,
        _add_split,
        _add_fit,
        _add_predict,
        _add_evaluate,
        _add_reconstruct,
    ):
        add(sub)
    _search.add_parser(sub, _subparser)
    _safety.add_arguments(sub)  # --force everywhere; checkpoints and interrupts: fit
    return parser


def main(argv=None) -> int:
    """Run ``skpose`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    command = _search.search if args.command == "search" else None
    command = command or getattr(_commands, args.command)
    try:
        set_threads(args.threads)
        return _safety.run(command, args)  # outputs checked first; 130/143 on signals
    except (ValueError, TypeError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        print(f"skpose: error: {message}", file=sys.stderr)
        return 2


def _entry() -> None:
    """Console-script entry point: exit with :func:`main`'s code."""
    sys.exit(main())
