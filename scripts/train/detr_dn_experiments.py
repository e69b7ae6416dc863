"""DETR from scratch on the synthetic shapes with and without the training-only queries.

Runs ``scripts/train/detr_coco_shapes.py`` (the COCO path of ``kzoo train detr`` on the shapes
exported as COCO files) for four variants, each with two seeds, one after the other:

- ``baseline``: DETR's own queries;
- ``dn``: ``--denoising-groups 5`` (DN-DETR's noise: box 0.4, labels 0.2);
- ``groups``: ``--query-groups 11``;
- ``both``: the two together;

all with the setup of the published curve (96 px, ``--augment flip``, 16 epochs, evaluation
every 4 epochs). It reads AP and AP50 after epochs 4, 8, 12 and 16 from each run's
``history.json``, writes them (with each run's CPU minutes) to ``--results`` and plots AP50
against the epoch for the four variants (mean of the seeds, each seed as a thin line) to
``--plot``. A finished run (its ``cpu_time.json`` present) is not run again, so the command
can be restarted after an interruption; ``--fresh`` reruns everything.

Example (about 80-100 minutes on an idle 2-core machine):

    KERAS_BACKEND=jax python scripts/train/detr_dn_experiments.py --data /tmp/shapes_coco \\
        --out /tmp/detr_runs/dn --results docs/img/detr_dn_results.json \\
        --plot docs/img/detr_dn_ap50.png
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "train", "detr_coco_shapes.py")
VARIANTS = {
    "baseline": [],
    "dn": ["--denoising-groups", "5"],
    "groups": ["--query-groups", "11"],
    "both": ["--denoising-groups", "5", "--query-groups", "11"],
}
EPOCHS = (4, 8, 12, 16)


def run(variant, seed, args):
    """Train one variant with one seed (unless done); returns its run directory."""
    out = os.path.join(args.out, f"{variant}_seed{seed}")
    if os.path.isfile(os.path.join(out, "cpu_time.json")) and not args.fresh:
        print(f"{variant} seed {seed}: done before, {out}", flush=True)
        return out
    cmd = [sys.executable, SCRIPT, "--data", args.data, "--out", out, "--"]
    cmd += ["--epochs", str(max(EPOCHS)), "--augment", "flip", "--eval-every", "4"]
    cmd += ["--seed", str(seed), "--verbose", "2", "--fresh", *VARIANTS[variant]]
    print("$", " ".join(cmd), flush=True)
    code = subprocess.call(cmd)
    if code:
        raise SystemExit(f"{variant} seed {seed} failed (exit {code}); see above")
    return out


def read_run(out):
    with open(os.path.join(out, "history.json")) as f:
        records = json.load(f)
    with open(os.path.join(out, "cpu_time.json")) as f:
        cpu = json.load(f)
    if isinstance(records, dict):
        records = records.get("records", [])
    by_epoch = {r["epoch"]: r for r in records}
    return {
        "AP50": {e: by_epoch.get(e, {}).get("val_AP50") for e in EPOCHS},
        "AP": {e: by_epoch.get(e, {}).get("val_AP") for e in EPOCHS},
        "cpu_minutes": cpu["cpu_minutes"],
        "wall_minutes": cpu["wall_minutes"],
        "run": out,
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (variant, seeds) in enumerate(results.items()):
        color = f"C{i}"
        curves = [[run["AP50"][e] for e in EPOCHS] for run in seeds.values()]
        for curve in curves:
            ax.plot(EPOCHS, curve, color=color, alpha=0.35, linewidth=1)
        mean = [sum(c[j] for c in curves) / len(curves) for j in range(len(EPOCHS))]
        ax.plot(EPOCHS, mean, color=color, marker="o", linewidth=2, label=variant)
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out AP50")
    ax.set_xticks(EPOCHS)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(title="DETR on synthetic shapes (96 px)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of the exported COCO splits")
    parser.add_argument("--out", required=True, help="folder of the runs (one per variant/seed)")
    parser.add_argument("--results", required=True, help="JSON file of the results")
    parser.add_argument("--plot", required=True, help="PNG of AP50 against the epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--fresh", action="store_true", help="rerun finished runs too")
    args = parser.parse_args(argv)
    results = {}
    for variant in args.variants:
        for seed in args.seeds:
            out = run(variant, seed, args)
            results.setdefault(variant, {})[f"seed{seed}"] = read_run(out)
            with open(args.results + ".tmp", "w") as f:
                json.dump(results, f, indent=2)
            os.replace(args.results + ".tmp", args.results)
    plot(results, args.plot)
    for variant, seeds in results.items():
        for seed, r in seeds.items():
            ap50 = " / ".join(f"{r['AP50'][e]:.2f}" for e in EPOCHS)
            ap = " / ".join(f"{r['AP'][e]:.3f}" for e in EPOCHS)
            print(f"{variant:>8} {seed}: AP50 {ap50}  AP {ap}  ({r['cpu_minutes']} CPU-min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
