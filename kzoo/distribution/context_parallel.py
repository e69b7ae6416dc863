"""``ContextParallel``: a keras distribution that shards data along the batch and the sequence.

Context parallelism (CP) splits every activation along the sequence across the devices of one
mesh axis. Per-token layers (embeddings, MLPs, normalisations) need nothing more; attention
needs other devices' keys, which :class:`kzoo.layers.ContextParallelAttention` passes round a
ring (or re-shards from the sequence to the heads with two all-to-alls). On JAX keras 3.15's
distribution API runs the mesh (global arrays sharded by XLA); on torch, where keras has none,
kzoo runs it on ``torch.distributed``, one process per device (``kzoo.distribution.runtime``,
``kzoo/backends/torch/``); TensorFlow computes on one device. ``kzoo.distribution.packing``
lays out packed documents for it.
"""

import numpy as np
from keras import distribution as kd
from keras import saving

from kzoo.distribution.runtime import list_devices, process_runtime

LOAD_BALANCES = ("zigzag", "contiguous")
STRATEGIES = ("ring", "all_to_all", "auto")

# keras exports its distributions but not their base class; reach it through DataParallel
# rather than through keras's private modules.
_Distribution = kd.DataParallel.__mro__[1]


def zigzag_permutation(seq_len, num_shards):
    """The layout order of a sequence of ``seq_len`` tokens over ``num_shards`` devices.

    The sequence is cut into ``2 * num_shards`` chunks and device ``r`` holds chunks ``r`` and
    ``2 * num_shards - 1 - r``, so that under a causal mask every device has the same work.
    Returns ``perm`` such that ``x[:, perm]`` is ``x`` in layout order (slot ``i`` holds the
    token at global position ``perm[i]``).

    Raises:
        ValueError: if ``seq_len`` does not divide by ``2 * num_shards``.
    """
    seq_len, num_shards = int(seq_len), int(num_shards)
    if num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer; got {num_shards}.")
    if seq_len % (2 * num_shards):
        raise ValueError(
            f"Context parallelism over {num_shards} devices needs the sequence length to divide "
            f"by 2 * CP = {2 * num_shards}; got seq_len={seq_len}. Pad the sequence (and mask "
            f"the padding) to a multiple of {2 * num_shards}."
        )
    chunk = seq_len // (2 * num_shards)
    order = []
    for r in range(num_shards):
        order += [r, 2 * num_shards - 1 - r]
    return np.concatenate([np.arange(j * chunk, (j + 1) * chunk) for j in order])


@saving.register_keras_serializable(package="kzoo")
class ContextParallel(_Distribution):
    """Shard input data along batch and sequence; replicate (or lay out) the variables.

    Every input of rank 2 or more is sharded with its first axis over ``batch_dim_name`` and
    its second (the sequence) over ``sequence_axis``; variables are replicated unless
    ``layout_map`` gives them a layout. Layers that mix tokens must know the sequence is split:
    :class:`kzoo.layers.ContextParallelAttention` does, and runs ring attention over
    ``sequence_axis``.

    On JAX keras's distribution API runs the mesh: arrays are global and XLA shards them. On
    torch every device of the mesh is a process of ``torch.distributed`` (launch the script
    with ``torchrun --nproc-per-node N``; build the mesh from
    :func:`kzoo.distribution.list_devices`): each process computes on its own shard of the
    data, the mesh's axes become process groups, and models that mix in
    :class:`kzoo.distribution.DistributedTrainer` (``kzoo.models.CausalLM`` does) train with
    ``fit`` across the processes. TensorFlow has no distribution runtime keras or kzoo can use:
    there the layer computes exact attention on one device.

    With ``load_balance="zigzag"`` (the default) the data's sequence axis must be in *layout
    order*: apply :meth:`to_layout_order` to inputs and targets once on the host (a gather on
    the host, no device communication; per-token layers and token-mean losses do not care about
    the order), and use :meth:`layout_positions` for position embeddings, as
    :class:`kzoo.models.CausalLM` does. ``"contiguous"`` keeps the natural order but leaves the
    last device of a causal model with about twice the average attention work.

    Args:
        device_mesh: A ``keras.distribution.DeviceMesh`` with a ``sequence_axis`` (and
            optionally a ``batch_dim_name``) axis.
        sequence_axis: Name of the mesh axis the sequence is split over.
        batch_dim_name: Name of the mesh axis the batch is split over, or ``None`` when the
            mesh has no batch axis.
        layout_map: Optional ``keras.distribution.LayoutMap`` on the same mesh, for variables
            that should not be replicated.
        load_balance: ``"zigzag"`` or ``"contiguous"``.
        auto_shard_dataset: As for keras's distributions (``tf.data`` inputs in multi-process
            runs). On torch: ``True`` - every process passes the same global arrays to
            ``fit``/``evaluate``/``predict`` and takes its part; ``False`` - each process feeds
            its own shard (its batch rows and its slice of the layout-ordered sequence).
        strategy: How attention crosses the devices: ``"ring"`` (key/value blocks travel
            round the devices; any number of heads), ``"all_to_all"`` (two all-to-alls
            re-shard from the sequence to the heads and back; needs the key/value heads, or
            the query heads with key/value heads copied, to divide by CP) or ``"auto"``
            (all-to-all when the key/value heads divide by CP, it sends fewer bytes and each
            device holds at most ``kzoo.ops.ring_attention.AUTO_ALL_TO_ALL_MAX_TOKENS`` tokens;
            else the ring). The choice is logged once (logger ``kzoo.context_parallel``).

    Example:

    ```python
    # JAX: 8 devices of one process; torch: `torchrun --nproc-per-node 8 script.py`.
    mesh = keras.distribution.DeviceMesh(
        (2, 4), ["batch", "context"], devices=kzoo.distribution.list_devices()
    )
    cp = kzoo.distribution.ContextParallel(mesh)
    with cp.scope():
        model = kzoo.models.CausalLM(vocabulary_size=256, num_layers=2, hidden_dim=64,
                                     num_heads=4)
        model.compile(optimizer="adam", loss=...)
        model.fit(cp.to_layout_order(x), cp.to_layout_order(y), batch_size=8)
    ```
    """

    def __init__(
        self,
        device_mesh,
        sequence_axis="context",
        batch_dim_name="batch",
        layout_map=None,
        load_balance="zigzag",
        auto_shard_dataset=True,
        strategy="ring",
    ):
        if not isinstance(device_mesh, kd.DeviceMesh):
            raise ValueError(
                "device_mesh must be a keras.distribution.DeviceMesh; "
                f"got {type(device_mesh).__name__}."
            )
        names = list(device_mesh.axis_names)
        if sequence_axis not in names:
            raise ValueError(
                f"sequence_axis={sequence_axis!r} is not an axis of the device mesh "
                f"(axes: {names})."
            )
        if batch_dim_name is not None and batch_dim_name not in names:
            raise ValueError(
                f"batch_dim_name={batch_dim_name!r} is not an axis of the device mesh "
                f"(axes: {names}); pass batch_dim_name=None for a mesh without a batch axis."
            )
        if batch_dim_name == sequence_axis:
            raise ValueError("batch_dim_name and sequence_axis must be different mesh axes.")
        if load_balance not in LOAD_BALANCES:
            raise ValueError(f"load_balance must be one of {LOAD_BALANCES}; got {load_balance!r}.")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}.")
        if layout_map is not None:
            if not isinstance(layout_map, kd.LayoutMap):
                raise ValueError(
                    "layout_map must be a keras.distribution.LayoutMap; "
                    f"got {type(layout_map).__name__}."
                )
            if layout_map.device_mesh is not device_mesh:
                raise ValueError("layout_map must be built on the same device_mesh.")
        super().__init__(device_mesh, batch_dim_name, auto_shard_dataset)
        self._sequence_axis = sequence_axis
        self._layout_map = layout_map
        self._load_balance = load_balance
        self._strategy = strategy
        self._runtime = process_runtime(device_mesh, sequence_axis, batch_dim_name)
        if self._runtime is not None:
            if layout_map is not None:
                raise ValueError(
                    "layout_map lays variables out over the mesh through keras's distribution "
                    "API, which does not exist on this backend: on torch every variable is "
                    "replicated on every process. Pass layout_map=None."
                )
            self._num_processes = self._runtime.world_size
            self._process_id = self._runtime.rank
            # keras's data adapters refuse numpy inputs in multi-process runs with automatic
            # sharding; here kzoo shards the arrays itself before keras sees them
            # (DistributedTrainer), so keras must treat each process's data as its own.
            self._is_multi_process = False

    @property
    def sequence_axis(self):
        return self._sequence_axis

    @property
    def batch_axis(self):
        """The mesh axis the batch is split over (``None`` when there is none)."""
        return self.batch_dim_name

    @property
    def load_balance(self):
        return self._load_balance

    @property
    def strategy(self):
        """``"ring"``, ``"all_to_all"`` or ``"auto"``."""
        return self._strategy

    @property
    def layout_map(self):
        return self._layout_map

    @property
    def context_size(self):
        """CP: the number of devices the sequence is split over."""
        return self._axis_size(self._sequence_axis)

    def _axis_size(self, name):
        if name is None:
            return 1
        return int(self.device_mesh.shape[list(self.device_mesh.axis_names).index(name)])

    @property
    def num_model_replicas(self):
        return self._axis_size(self.batch_dim_name)

    @property
    def runtime(self):
        """The backend's per-process runtime (torch: the process groups of the mesh), or
        ``None`` where arrays are global (JAX) or there is none (TensorFlow)."""
        return self._runtime

    @property
    def local_shards(self):
        """Whether each process computes on its own shard of the data (torch's one process per
        device), so that layers see ``1 / CP`` of the sequence rather than the global array."""
        return self._runtime is not None

    @property
    def backend_mesh(self):
        """What the backend's context-parallel attention runs over: the ``jax.sharding.Mesh``
        on JAX, the process mesh on torch."""
        if self._runtime is not None:
            return self._runtime
        return self.device_mesh.backend_mesh

    def sequence_length(self, seen):
        """The length of the whole sequence when a layer sees ``seen`` sequence slots."""
        return int(seen) * self.context_size if self.local_shards else int(seen)

    def shard_positions(self, seen):
        """Global positions of the ``seen`` sequence slots a layer sees: on JAX all of
        ``layout_positions(seen)``; on torch this process's part of the layout order of the
        whole sequence (``seen * CP`` tokens)."""
        if not self.local_shards:
            return self.layout_positions(seen)
        seen = int(seen)
        index = self._runtime.context_index
        return self.layout_positions(seen * self.context_size)[index * seen : (index + 1) * seen]

    def layout_permutation(self, seq_len):
        """``perm`` with ``x[:, perm]`` in this distribution's layout order.

        Raises:
            ValueError: if ``seq_len`` does not divide by ``2 * CP`` (when CP > 1).
        """
        cp = self.context_size
        # Zigzag validates the length itself; contiguous shards need it too, since the ring
        # splits each device's chunk in two halves.
        perm = zigzag_permutation(seq_len, cp) if cp > 1 else np.arange(int(seq_len))
        if self._load_balance == "contiguous":
            return np.arange(int(seq_len))
        return perm

    def layout_positions(self, seq_len):
        """Global position of every slot of a sequence in layout order."""
        return self.layout_permutation(seq_len)

    def to_layout_order(self, x, axis=1):
        """``x`` (a numpy array) with its sequence ``axis`` reordered into layout order."""
        x = np.asarray(x)
        return np.take(x, self.layout_permutation(x.shape[axis]), axis=axis)

    def from_layout_order(self, x, axis=1):
        """Inverse of :meth:`to_layout_order`."""
        x = np.asarray(x)
        inverse = np.argsort(self.layout_permutation(x.shape[axis]))
        return np.take(x, inverse, axis=axis)

    def get_data_layout(self, data_shape):
        spec = [None] * len(data_shape)
        if len(spec) >= 1:
            spec[0] = self.batch_dim_name
        if len(spec) >= 2:
            spec[1] = self._sequence_axis
        return kd.TensorLayout(spec, self.device_mesh)

    def get_variable_layout(self, variable):
        if getattr(variable, "_layout", None) is not None:
            return variable._layout
        if self._layout_map is not None:
            layout = self._layout_map[variable.path]
            if layout is not None:
                return layout
        return kd.TensorLayout([None] * len(variable.shape), self.device_mesh)

    def get_tensor_layout(self, path):
        if self._layout_map is None:
            return None
        return self._layout_map[path]

    def get_config(self):
        """Mesh shape, axis names and options (the devices themselves are not serialised)."""
        return {
            "mesh_shape": tuple(int(s) for s in self.device_mesh.shape),
            "axis_names": list(self.device_mesh.axis_names),
            "sequence_axis": self._sequence_axis,
            "batch_dim_name": self.batch_dim_name,
            "load_balance": self._load_balance,
            "strategy": self._strategy,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        shape = tuple(config.pop("mesh_shape"))
        devices = list_devices()
        if len(devices) != int(np.prod(shape)):
            devices = None  # keras's default (and its error) for a mesh of another size
        mesh = kd.DeviceMesh(shape, config.pop("axis_names"), devices=devices)
        return cls(mesh, **config)

    def __repr__(self):
        return (
            f"<ContextParallel device_mesh={self.device_mesh} sequence_axis="
            f"{self._sequence_axis!r} batch_dim_name={self.batch_dim_name!r} "
            f"load_balance={self._load_balance!r} strategy={self._strategy!r}>"
        )
