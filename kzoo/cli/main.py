"""``kzoo``: info, list, train, predict, convert, export, bench.

User mistakes (bad arguments, missing files, unknown presets) end with one ``kzoo: error:`` line
and exit status 2; only bugs print a traceback.
"""

import argparse
import importlib
import os
import sys

from kzoo.cli.targets import TARGET_MODULES

COMMANDS = ("train", "predict", "convert", "export")


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

    p = sub.add_parser("list", help="the registered presets")
    p.add_argument("--model", help="only presets of this model class")
    p.set_defaults(func=cmd_list)

    commands = {}
    helps = {
        "train": "train a model on built-in synthetic data",
        "predict": "run a model and write a picture of its predictions",
        "convert": "convert a checkpoint from another framework into a kzoo preset",
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

    p = sub.add_parser("demo", help="the main job: info, then the ConvLSTM colour-frame demo")
    p.add_argument("--out", default=os.path.join("demo", "grid.png"), help="PNG to write")
    p.set_defaults(func=cmd_demo, _commands=commands)

    p = sub.add_parser("bench", help="run a benchmark script from scripts/ (source checkout)")
    p.add_argument("name", help="benchmark name: runs scripts/bench_<name>.py")
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

    presets = list_presets(model_class=args.model)
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


def cmd_demo(args):
    cmd_info(args)
    predict = args._commands["predict"].choices.get("convlstm-color")
    if predict is None:
        raise UserError("the ConvLSTM colour demo is not part of this build")
    print("\n$ kzoo predict convlstm-color --out", args.out)
    demo_args = predict.parse_args(["--out", args.out])
    return demo_args.func(demo_args)


def cmd_bench(args):
    import runpy

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(root, "scripts", f"bench_{args.name}.py")
    if not os.path.isfile(script):
        available = (
            sorted(
                f[len("bench_") : -3]
                for f in os.listdir(os.path.join(root, "scripts"))
                if f.startswith("bench_") and f.endswith(".py")
            )
            if os.path.isdir(os.path.join(root, "scripts"))
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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"kzoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kzoo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
