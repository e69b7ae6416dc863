"""Where a ConvLSTM training step spends its time on torch: kzoo's layer against keras's.

Profiles two ``train_on_batch`` steps of one point of the benchmark grid
(``scripts/convlstm_grid.py``) with ``torch.profiler`` (one CPU thread) and prints the top ops
by self CPU time for each layer. Usage: ``python scripts/profile_convlstm_torch.py [POINT]``
(default ``64px-k3``).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(point_name="64px-k3"):
    os.environ["KERAS_BACKEND"] = "torch"
    sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]
    import keras
    import numpy as np
    import torch
    from convlstm_grid import build_model, points

    from kzoo.layers import ConvLSTM2D

    torch.set_num_threads(1)
    (point,) = points([point_name])
    shape = (point["batch"], point["frames"], point["size"], point["size"], 1)
    x = np.random.default_rng(0).random(shape).astype("float32")
    for name, cls in (("kzoo", ConvLSTM2D), ("keras", keras.layers.ConvLSTM2D)):
        keras.utils.set_random_seed(0)
        model = build_model(point, cls)
        model.compile("adam", "mse")
        y = model.predict(x, verbose=0)
        for _ in range(2):  # warm-up
            model.train_on_batch(x, y)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                model.train_on_batch(x, y)
        print(f"==== {name} layer, grid point {point['name']} (two steps)")
        table = prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40
        )
        print(table)


if __name__ == "__main__":
    main(*sys.argv[1:2])
