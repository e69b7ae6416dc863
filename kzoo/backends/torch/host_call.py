"""``host_call`` on torch: keras runs torch eagerly, so tensors go to numpy and back."""

import numpy as np
import torch


def host_call(fn, args, out_shapes, out_dtypes):
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    arrays = [
        a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in args
    ]
    outs = fn(*arrays)
    return tuple(
        # np.array, not ascontiguousarray: the latter turns a 0-d result into shape (1,).
        torch.from_numpy(np.array(o, dtype=d, order="C")).to(device)
        for o, d in zip(outs, out_dtypes)
    )
