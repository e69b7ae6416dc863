"""``kzoo``: info, list, train, predict, convert, eval, export, bench.

User mistakes (bad arguments, missing files, unknown presets) end with one ``kzoo: error:`` line
and exit status 2; only bugs print a traceback.
"""

import argparse
import importlib
import os
import sys

from kzoo.cli.targets import TARGET_MODULES

COMMANDS = ("train", "predict", "convert", "eval", "export")
DEMO_OUT = os.path.join("demo", "grid.png")


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kzoo", description="kzoo: a Keras 3 multi-backend model zoo."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="backend, versions, devices and the kernels this machine uses")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("list", help="the registered presets, or what kzoo has cached")
    p.add_argument("--model", help="only presets of this model class")
    p.add_argument(
        "--cached",
        action="store_true",
        help="list kzoo's cache instead: hf:// presets (repo, commit, revisions), converted "
        "presets and downloads, with their sizes and paths",
    )
    p.set_defaults(func=cmd_list)

    commands = {}
    helps = {
        "train": "train a model (on built-in synthetic data or your own)",
        "predict": "run a model and write a picture of its predictions",
        "convert": "convert a checkpoint from another framework into a kzoo preset",
        "eval": "evaluate a model on a dataset (COCO metrics for detection)",
        "export": "export a preset to SavedModel, ONNX or LiteRT and check it in its runtime",
    }
    for name in COMMANDS:
        p = sub.add_parser(name, help=helps[name])
        targets = p.add_subparsers(dest="target", metavar="TARGET")
        targets.required = True
        commands[name] = targets
    for module in TARGET_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            # Targets whose model package is not installed in this build are left out.
            if e.name is None or not module.startswith(e.name):
                raise
            continue
        mod.register(commands)

    p = sub.add_parser(
        "demo", help="the main job: the ConvLSTM colour-frame demo (versions and devices first)"
    )
    p.add_argument(
        "--out",
        default=None,
        help=f"PNG to write (default {DEMO_OUT}, which a later demo replaces; any other "
        "existing file needs --overwrite)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_demo, _commands=commands)

    p = sub.add_parser("bench", help="run a benchmark script from scripts/ (source checkout)")
    p.add_argument("name", help="benchmark name: runs scripts/bench/<name>.py")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.set_defaults(func=cmd_bench)
    return parser


def cmd_info(args):
    from kzoo.backends import environment as kb

    kb.check_backend_env()
    import keras

    import kzoo
    from kzoo.backends import dispatch

    backend = kb.backend_name()
    platform = kb.platform()
    print(f"kzoo      {kzoo.__version__}")
    print(f"keras     {keras.__version__}")
    print(f"backend   {backend} {kb.framework_version(backend)} (set by KERAS_BACKEND)")
    print(f"platform  {platform}")
    print(f"devices   {', '.join(kb.devices())}")
    kernels = "off (KZOO_KERNELS=off)" if not dispatch.kernels_enabled() else "on"
    print(f"kernels   {kernels}")
    ops = dispatch.ops()
    if ops:
        print("\nop implementations (this machine):")
        other_platform = "gpu" if os.path.exists("/dev/nvidia0") else "cpu"
        for op in ops:
            for b in ("jax", "tensorflow", "torch"):
                plat = platform if b == backend else other_platform
                impl = dispatch.find(op, backend=b, platform=plat)
                name, description = (impl.name, impl.description) if impl else ("-", "none")
                mark = "*" if b == backend else " "
                print(f" {mark} {op:<22} {b:<11} {plat:<4} -> {name}: {description}")
    return 0


def cmd_list(args):
    from kzoo.presets import list_presets

    if args.cached:
        if args.model is not None:
            raise UserError("--cached lists every cached preset; it takes no --model.")
        return _list_cached()

    presets = list_presets(model_class=args.model)
    if args.model is not None and not presets:
        import difflib

        classes = sorted({p.model_class for p in list_presets()})
        close = difflib.get_close_matches(args.model, classes, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(
            f"--model {args.model!r}: no registered preset is of that model class.{hint} "
            f"Classes with presets: {', '.join(classes) or 'none'}."
        )
    rows = [("name", "model", "license", "description", "location")]
    rows += [(p.name, p.model_class, p.license, p.description, p.location) for p in presets]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
        if i == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * 8)
    if not presets:
        print("(no presets registered)")
    return 0


def _list_cached():
    from kzoo.presets import cache

    entries = cache.cached_presets()
    if not entries:
        print(f"(nothing cached under {cache.keras_home()})")
        return 0
    rows = [("source", "commit", "revisions", "size", "path")]
    for e in entries:
        rows.append((e.source, e.version[:12], ",".join(e.refs), cache.format_size(e.size), e.path))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    return 0


def cmd_demo(args):
    """A few lines on what runs where, a progress bar, then where the picture is.

    The full table of op implementations is ``kzoo info``'s; a newcomer's first command shows
    what happened without scrolling.
    """
    from kzoo.backends import environment as kb

    kb.check_backend_env()
    predict = args._commands["predict"].choices.get("convlstm-color")
    if predict is None:
        raise UserError("the ConvLSTM colour demo is not part of this build")
    import keras

    import kzoo

    out = args.out or DEMO_OUT
    # The default output is the demo's own picture: rerunning the demo refreshes it.
    overwrite = args.overwrite or args.out is None
    argv = ["--out", out] + (["--overwrite"] if overwrite else [])
    demo_args = predict.parse_args(argv)
    backend = kb.backend_name()
    devices = kb.devices()
    shown = ", ".join(devices[:3]) + (f", ... ({len(devices)} devices)" if len(devices) > 3 else "")
    print(
        f"kzoo {kzoo.__version__}, keras {keras.__version__}, backend {backend} "
        f"{kb.framework_version(backend)} on {kb.platform()} ({shown})"
    )
    print(
        f"demo: the shipped {demo_args.preset} preset (ConvLSTM2D) predicts the next colour "
        f"frame of {demo_args.num_examples} generated videos of moving shapes"
    )
    print(
        f"      same as: kzoo predict convlstm-color {' '.join(argv)} "
        "(this machine in detail: kzoo info)"
    )
    demo_args._progress = True
    return demo_args.func(demo_args)


def _is_script(path):
    """A benchmark runs; a module the benchmarks share (``convlstm_grid``) does not."""
    with open(path) as f:
        return "__main__" in f.read()


def cmd_bench(args):
    import runpy

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folder = os.path.join(root, "scripts", "bench")
    script = os.path.join(folder, f"{args.name}.py")
    if not os.path.isfile(script):
        available = (
            sorted(
                f[:-3]
                for f in os.listdir(folder)
                if f.endswith(".py") and _is_script(os.path.join(folder, f))
            )
            if os.path.isdir(folder)
            else []
        )
        raise UserError(
            f"no benchmark named {args.name!r}"
            + (
                f"; available: {', '.join(available)}"
                if available
                else " (benchmarks run from a source checkout of kzoo)"
            )
        )
    sys.argv = [script] + list(args.args)
    runpy.run_path(script, run_name="__main__")
    return 0


# Output options every command may have, checked before the command does any work.
OUTPUT_OPTIONS = {"out": "--out", "output_dir": "--output-dir", "dst": "DST"}


def check_outputs(args):
    from kzoo.utils.paths import check_output_location

    for attr, option in OUTPUT_OPTIONS.items():
        value = getattr(args, attr, None)
        if isinstance(value, str):
            check_output_location(value, option)


def os_error_message(e):
    """One line for an OSError: what failed, on which path, without a traceback."""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    reason = e.strerror or str(e)
    return f"{paths}: {reason}" if paths else reason


def _import_kzoo():
    # Run as the command, ``import kzoo`` skipped keras and kzoo's subpackages so that --help and
    # argument errors load no framework; a command runs with kzoo imported as a library user has
    # it (presets registered, old module paths answered).
    import kzoo

    kzoo._import_all()


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_outputs(args)
        _import_kzoo()
        return int(args.func(args) or 0)
    except (UserError, ValueError) as e:
        print(f"kzoo: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        # Files that vanish, permissions, full or read-only disks: the user's environment, not a
        # bug in kzoo.
        print(f"kzoo: error: {_one_line(os_error_message(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kzoo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = wrapped_value_error(e)
        if message is None:
            raise
        print(f"kzoo: error: {_one_line(message)}", file=sys.stderr)
        return 2


# Frameworks that run Python code inside their graphs and re-raise its errors as their own.
_FRAMEWORK_MODULES = ("tensorflow", "jax", "jaxlib", "torch")


def wrapped_value_error(error):
    """The message of a ``ValueError`` raised by Python code a framework ran for kzoo, or None.

    TensorFlow's ``tf.data`` reads a ``keras.utils.PyDataset``'s batches (after the first two)
    inside a ``py_function`` and re-raises a ``ValueError`` there (a COCO image that cannot be
    decoded, say) as its own ``InvalidArgumentError`` whose message holds the Python traceback;
    JAX's host callbacks do the same. The line ``ValueError: ...`` in it is kzoo's message.
    """
    if not type(error).__module__.startswith(_FRAMEWORK_MODULES):
        return None
    for line in str(error).splitlines():
        if line.startswith("ValueError: "):
            return line[len("ValueError: ") :]
    return None


def _one_line(message):
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
