"""Command line interface: ``shapeprior COMMAND ...``.

Each command is a module of this package with a ``main(argv)`` that returns
the exit code, so it can be run and tested in-process; :func:`main`
dispatches and turns any error into one stderr line. ``shapeprior --help``
lists every command; ``shapeprior COMMAND --help`` describes one.

Exit codes: 0 success; 1 bad input or an error (one line on stderr); 2 usage;
3 a result that is not trustworthy (``failed``, or ``suspect`` with
``--strict``); 130/143 interrupted or terminated (nothing partial kept).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from .._interrupt import Terminated, interruption
from .._outputs import OutputExistsError, one_line

#: command name -> (module in this package, one line for ``--help``)
COMMANDS = {
    "segment": ("segment", ("segment an organ in a NIfTI/NRRD/MHA file, DICOM series or folder "
                           "of cases")),
    "refine": ("refine", "refine an existing label map (any tool's) with the shape prior"),
    "reconstruct": ("reconstruct", ("SSC for a folder of shapes in correspondence (population "
                                   "studies): reconstructions and gross errors")),
    "build-model": ("build_model", "build an SSC shape model from label maps (and images)"),
    "update-model": ("update_model", ("add confirmed label maps to a model without a rebuild, "
                                     "or rank candidates (--rank-only)")),
    "convert-rtstruct": ("convert_rtstruct", ("an RT Structure Set's contours as a label map "
                                             "on the scan they were drawn on")),
    "model-info": ("model_info", ("describe a model file: organ, shapes, labels, appearance, "
                                 "provenance")),
    "export-model": ("export_model", ("write a model's mean, mode and training meshes for "
                                     "ParaView/Slicer")),
    "demo": ("demo", "the whole pipeline on built-in synthetic phantoms (no download)"),
    "ssc-demo": ("ssc_demo", "SSC alone on synthetic shapes with a leak and missing vertices"),
}


def command(name):
    """The ``main(argv)`` of command ``name``."""
    return importlib.import_module(f".{COMMANDS[name][0]}", __name__).main


def parser():
    """The top-level parser: ``shapeprior --help`` lists every command."""
    ap = argparse.ArgumentParser(
        prog="shapeprior", description="Sparse shape composition (SSC) segmentation for CT "
        "and MRI. Coordinates on the command line and in files are LPS millimetres unless "
        "an option says otherwise.",
        epilog="Run 'shapeprior COMMAND --help' for a command's options.",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=18,
                                                            width=110))
    ap.add_argument("--version", action="version", version=f"shapeprior {__version__}")
    sub = ap.add_subparsers(title="commands", metavar="COMMAND")
    for name, (_, doc) in COMMANDS.items():
        sub.add_parser(name, help=doc, add_help=False)
    return ap


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None):
    """Run ``shapeprior COMMAND ...``; returns the exit code.

    Bad input of any kind ends with one line on stderr and exit code 1;
    Ctrl-C and SIGTERM end with one line, nothing partial kept, and 130/143.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--version"):
        ap = parser()
        if not argv:
            ap.print_help(sys.stderr)
            return 2
        try:
            ap.parse_args(argv[:1])
        except SystemExit as exc:       # --help / --version print and exit 0
            return int(exc.code or 0)
    if argv[0] not in COMMANDS:
        print(f"shapeprior: unknown command {one_line(argv[0])!r}; choose from "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    cmd = command(argv[0])
    import contextvars
    import signal
    import threading

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            # in a context of its own: what a command sets for itself (--deidentify's
            # withheld names) ends with it
            rc = contextvars.copy_context().run(cmd, argv[1:])
            sys.stdout.flush()  # a block-buffered pipe's reader may have left (below)
            return rc
        except Exception as exc:
            # Ctrl-C or SIGTERM inside compiled code's callback: a SystemError
            # caused by the interruption (shapeprior._interrupt)
            it = interruption(exc)
            if it is None:
                raise
            raise it from None
    except KeyboardInterrupt:
        print(f"shapeprior {argv[0]}: interrupted; nothing partial was kept", file=sys.stderr)
        return 130
    except Terminated:
        print(f"shapeprior {argv[0]}: terminated; nothing partial was kept", file=sys.stderr)
        return 143
    except OutputExistsError as exc:
        print(f"shapeprior {argv[0]}: {one_line(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"shapeprior {argv[0]}: error: out of memory", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader of stdout left (``| head``): end quietly, as SIGPIPE would; the
        # interpreter's last flush then writes to nothing. Unbuffered, the run stops
        # at its next line and keeps nothing; block-buffered, it has finished
        # (its outputs are published) before the lines leave
        import os

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"shapeprior {argv[0]}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        import os

        if os.environ.get("SHAPEPRIOR_DEBUG"):
            raise
        print(f"shapeprior {argv[0]}: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(set SHAPEPRIOR_DEBUG=1 for the traceback, and please report it)",
              file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
