"""The ``skpose`` command line: from RELION files to RELION files.

Each subcommand is a thin call into the library; ``main(argv)`` returns the exit code.
Errors in the user's files or options print one line, ``skpose: error: ...``, and exit
with status 2, without a traceback.

The paper's workflow in five commands::

    skpose simulate map.mrc --n 5000 --snr 1 --ctf --max-shift 3 --out sim/
    skpose split sim/particles.star --fraction 0.2 --out sim/
    skpose fit sim/train.star --volume map.mrc --out model.joblib
    skpose predict sim/rest.star --model model.joblib --out predicted.star
    skpose evaluate predicted.star sim/rest.star --volume map.mrc --out report/
    skpose reconstruct predicted.star --out map_new.mrc --half-maps
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skpose._threads import set_threads
from skpose.cli import _commands

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
}


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


def _subparser(sub, name: str, help_text: str):
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {_EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    return p


def _add_simulate(sub) -> None:
    p = _subparser(sub, "simulate", "Simulate a RELION 3.1 particle set from a map.")
    p.add_argument("map", type=Path, help="cubic MRC map")
    p.add_argument("--n", type=int, default=1000, help="particles (default 1000)")
    p.add_argument("--snr", type=float, default=None, help="default: noiseless")
    p.add_argument("--ctf", action="store_true", help="random defoci 1-2.5 um")
    p.add_argument("--max-shift", type=float, default=0.0, help="pixels")
    p.add_argument("--pixel-size", type=float, default=None, help="A (default: map's)")
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
    p.add_argument("--cv", type=int, default=3, help="folds of the grid search")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--max-iter", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--box", type=int, default=None, help="network input size")
    p.add_argument(
        "--architecture",
        choices=["auto", "vgg16", "small"],
        default="auto",
        help="auto: the paper's vgg16 on a GPU, our small network on a CPU",
    )
    p.add_argument("--symmetry", default=None, help="e.g. D2 (symmetric QD loss)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=1)


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
        "--batch-size", type=int, default=256, help="particles per chunk (task)"
    )
    p.add_argument("--max-open-files", type=int, default=32)
    p.add_argument(
        "--scheduler",
        default=None,
        help="dask scheduler address (tcp://host:8786): predict on its workers",
    )
    p.add_argument("--scheduler-timeout", type=float, default=10.0, help="seconds")
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
    parser = argparse.ArgumentParser(
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
    return parser


def main(argv=None) -> int:
    """Run ``skpose`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    command = getattr(_commands, args.command)
    try:
        set_threads(args.threads)
        command(args)
    except (ValueError, TypeError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        print(f"skpose: error: {message}", file=sys.stderr)
        return 2
    return 0


def _entry() -> None:
    """Console-script entry point: exit with :func:`main`'s code."""
    sys.exit(main())
