"""Training-only decoder queries: denoising queries (DN-DETR) and query groups (Group DETR).

Both speed up DETR's convergence and change nothing at inference; they are options of
``DETR.compile(denoising=..., query_groups=...)`` (``TrainConfig`` / ``kzoo train detr``).

**Query groups** (Chen et al., Group DETR, ICCV 2023). The decoder runs ``query_groups`` (K)
groups of ``num_queries`` (Q) object queries: group 0 is the model's own ``query_embed``, groups
1..K-1 have learned embeddings of their own. Self-attention is blocked between groups, so each
group is a DETR of its own sharing every other weight; each group is matched one-to-one to the
targets (one batched Hungarian call for all groups), and the group losses are averaged. At
inference only group 0 exists.

**Denoising queries** (Li et al., DN-DETR, CVPR 2022). ``DenoisingConfig.groups`` (G) copies of
the ground truth are noised and fed as extra queries that must reconstruct the original boxes and
labels (no matching: DN query (g, t) answers for target t). A target (x, y, w, h) is noised as
DN-DETR does: the centre moves by up to ``box_noise_scale`` times half the box's size,
``|dx| < lambda w / 2``, ``|dy| < lambda h / 2``, the size is scaled within
``[(1 - lambda) w, (1 + lambda) w]`` (same for h), all uniform, then clipped to [0, 1]; the
label is replaced with probability ``label_noise_ratio`` by one drawn uniformly from all classes.

DN-DETR feeds the noised box as the query's anchor (DAB-DETR's decoder). DETR's decoder has no
anchors: its queries are a content part (the decoder's starting target, zero) and a learned
position embedding added to the attention queries and keys. The adaptation here keeps that
decoder: a DN query's content is the embedding of its noised label (a ``(num_classes, d_model)``
table) and its position embedding is an MLP (``2 d_model -> d_model -> d_model``, ReLU) of the
sine embedding of its noised box (``d_model / 2`` features per coordinate, DAB-DETR's
``ref_point_head``). DETR's class and box heads read the DN queries' outputs unchanged.

**Ragged targets** need no per-batch shapes: targets come padded to T slots (label -1), so each
DN group has T slots; padded slots are masked as attention keys and give no loss.

**Attention mask** (True: may attend). Queries are laid out ``[group 0 | ... | group K-1 | DN
group 0 | ... | DN group G-1]``. A matching query sees only its own group; a DN query sees the
real (unpadded) slots of its own DN group and the matching queries of group 0; nothing sees
another DN group or a padded slot. So the matching queries, which are all inference has, never
see a DN query, and no DN group sees the ground truth carried by another.

The training-only weights live in one layer, ``model.training_queries`` (this module's
``DETRTrainingQueries``), attached by ``compile``; presets saved by ``DETR.save_to_preset`` and
the training engine leave it out (a plain DETR loads them), backups keep it (to resume).
"""

import math

import keras
import numpy as np
from keras import ops

from kzoo.models.detr import recipe
from kzoo.models.detr.model.initializers import glorot_uniform, standard_normal

# The key under which DETR's train step hands the targets to ``call`` (never set at inference).
TARGETS_KEY = "targets"


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")


def _check_fraction(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}.")


@keras.saving.register_keras_serializable(package="kzoo")
class DenoisingConfig:
    """DN-DETR's denoising queries for DETR training (``DETR.compile(denoising=...)``).

    Args:
        groups: Noised copies of the ground truth per image (DN-DETR: 5).
        box_noise_scale: lambda in [0, 1]: centres move by up to lambda times half the box's
            width / height, sizes are scaled within [1 - lambda, 1 + lambda] (DN-DETR: 0.4).
        label_noise_ratio: Probability in [0, 1] that a label is replaced by a class drawn
            uniformly (DN-DETR: 0.2).

    Example:

    ```python
    model.compile(denoising=kzoo.models.detr.DenoisingConfig(groups=5), query_groups=11)
    ```
    """

    def __init__(
        self,
        groups=recipe.DN_GROUPS,
        box_noise_scale=recipe.DN_BOX_NOISE_SCALE,
        label_noise_ratio=recipe.DN_LABEL_NOISE_RATIO,
    ):
        _check_int("groups", groups, 1)
        _check_fraction("box_noise_scale", box_noise_scale)
        _check_fraction("label_noise_ratio", label_noise_ratio)
        self.groups = groups
        self.box_noise_scale = float(box_noise_scale)
        self.label_noise_ratio = float(label_noise_ratio)

    def get_config(self):
        return {
            "groups": self.groups,
            "box_noise_scale": self.box_noise_scale,
            "label_noise_ratio": self.label_noise_ratio,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, DenoisingConfig) and self.get_config() == other.get_config()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"DenoisingConfig({args})"


def as_denoising_config(value):
    """``None``, a ``DenoisingConfig`` or its config dict -> ``DenoisingConfig`` or ``None``."""
    if value is None or isinstance(value, DenoisingConfig):
        return value
    if isinstance(value, dict):
        return DenoisingConfig.from_config(value)
    raise ValueError(
        f"denoising must be None, a DenoisingConfig or its config dict; got {value!r}."
    )


# --------------------------------------------------------------------------- noise and masks


def noise_boxes(boxes, uniform, box_noise_scale):
    """DN-DETR's box noise of normalised (cx, cy, w, h) ``boxes`` given ``uniform`` draws.

    ``uniform`` has the boxes' shape, values in [0, 1): each becomes ``u * 2 - 1`` in [-1, 1),
    which scales half the size (centre shift) or the size (size change) by ``box_noise_scale``.
    The result is clipped to [0, 1].
    """
    boxes = ops.cast(boxes, "float32")
    size = boxes[..., 2:]
    reach = ops.concatenate([size / 2.0, size], axis=-1)
    noised = boxes + (ops.cast(uniform, "float32") * 2.0 - 1.0) * reach * box_noise_scale
    return ops.clip(noised, 0.0, 1.0)


def noise_labels(labels, uniform, random_labels, label_noise_ratio):
    """Labels replaced by ``random_labels`` where ``uniform < label_noise_ratio``; padded slots
    (label < 0) stay as they are."""
    labels = ops.cast(labels, "int32")
    flip = ops.logical_and(ops.cast(uniform, "float32") < label_noise_ratio, labels >= 0)
    return ops.where(flip, ops.cast(random_labels, "int32"), labels)


def group_blocks(num_queries, query_groups, dn_groups, dn_slots):
    """The (N, N) bool self-attention pattern before padding (numpy; sizes are static)."""
    matching = num_queries * query_groups
    n = matching + dn_groups * dn_slots
    allowed = np.zeros((n, n), bool)
    for k in range(query_groups):
        rows = slice(k * num_queries, (k + 1) * num_queries)
        allowed[rows, rows] = True
    for g in range(dn_groups):
        rows = slice(matching + g * dn_slots, matching + (g + 1) * dn_slots)
        allowed[rows, rows] = True
        allowed[rows, :num_queries] = True
    return allowed


def decoder_attention_mask(num_queries, query_groups, dn_groups, target_valid):
    """(B, N, N) bool: True where query i may attend to query j (see the module docstring).

    ``target_valid`` (B, T) is True on real target slots; a DN group has T slots.
    """
    target_valid = ops.cast(target_valid, "bool")
    slots = target_valid.shape[1] if dn_groups else 0
    allowed = ops.convert_to_tensor(group_blocks(num_queries, query_groups, dn_groups, slots))
    batch = ops.shape(target_valid)[0]
    n = allowed.shape[0]
    if not dn_groups:
        return ops.broadcast_to(ops.expand_dims(allowed, 0), (batch, n, n))
    matching = ops.ones((batch, num_queries * query_groups), "bool")
    keys = ops.concatenate([matching] + [target_valid] * dn_groups, axis=1)
    return ops.logical_and(ops.expand_dims(allowed, 0), ops.expand_dims(keys, 1))


def box_sine_embedding(boxes, features_per_coordinate, temperature=10000.0):
    """(..., 4) boxes in [0, 1] -> (..., 4 * features_per_coordinate): DETR's sine encoding
    (scale 2 pi, sin and cos interleaved) of each of cx, cy, w, h."""
    boxes = ops.cast(boxes, "float32")
    n = features_per_coordinate
    exponent = np.array([2 * (i // 2) / n for i in range(n)], "float32")
    dim_t = ops.convert_to_tensor(np.power(np.float32(temperature), exponent))
    angles = ops.expand_dims(boxes * (2 * math.pi), -1) / dim_t
    sin = ops.sin(angles[..., 0::2])
    cos = ops.cos(angles[..., 1::2])
    interleaved = ops.reshape(ops.stack([sin, cos], axis=-1), (*ops.shape(angles)[:-1], n))
    return ops.reshape(interleaved, (*ops.shape(boxes)[:-1], 4 * n))


# --------------------------------------------------------------------------- the layer


@keras.saving.register_keras_serializable(package="kzoo")
class DETRTrainingQueries(keras.layers.Layer):
    """The training-only queries of a DETR: extra query groups and denoising queries.

    ``DETR.compile(denoising=..., query_groups=...)`` attaches one as ``model.training_queries``;
    you do not normally build one yourself.

    Args:
        num_classes: The DETR's number of classes (the label table's size).
        num_queries: The DETR's object queries per group (Q).
        d_model: The DETR's width.
        query_groups: K >= 1 groups of object queries (1: DETR's own queries only).
        denoising: A ``DenoisingConfig`` (or its config dict), or None for no denoising queries.
        seed: Seed of the noise (an int, or None for a random one).

    Weights: ``group_query_embed`` ((K-1) * Q, d_model) when K > 1; ``label_embed``
    (num_classes, d_model) and the box MLP ``box_embed_0``/``box_embed_1`` with denoising.

    Call arguments:
        query_embed: (Q, d_model) the DETR's own object queries (group 0).
        target_boxes: (B, T, 4) normalised (cx, cy, w, h), padded.
        target_labels: (B, T) int, padded with -1.

    Returns ``{"content", "position", "attention_mask"}`` for ``DETRHead(..., queries=...)``;
    ``split_outputs`` turns the head's outputs over those queries into DETR's training outputs.

    Example:

    ```python
    queries = DETRTrainingQueries(3, 5, 16, query_groups=2, denoising=DenoisingConfig(groups=2))
    out = queries(np.zeros((5, 16), "float32"), boxes, labels)  # boxes (B, T, 4), labels (B, T)
    out["position"].shape  # (B, 2 * 5 + 2 * T, 16)
    ```
    """

    def __init__(
        self,
        num_classes,
        num_queries,
        d_model,
        query_groups=1,
        denoising=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_int("num_classes", num_classes, 1)
        _check_int("num_queries", num_queries, 1)
        _check_int("d_model", d_model, 4)
        _check_int("query_groups", query_groups, 1)
        if d_model % 4:
            raise ValueError(f"d_model must be a multiple of 4; got {d_model}.")
        denoising = as_denoising_config(denoising)
        if denoising is None and query_groups == 1:
            raise ValueError(
                "DETRTrainingQueries needs query_groups > 1 or a DenoisingConfig (else DETR "
                "trains with its own queries only)."
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None; got {seed!r}.")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.d_model = d_model
        self.query_groups = query_groups
        self.denoising = denoising
        self.seed = seed
        self.dn_groups = denoising.groups if denoising is not None else 0
        if denoising is not None:
            self.box_embed_0 = keras.layers.Dense(
                d_model, activation="relu", kernel_initializer=glorot_uniform(), name="box_embed_0"
            )
            self.box_embed_1 = keras.layers.Dense(
                d_model, kernel_initializer=glorot_uniform(), name="box_embed_1"
            )
            self.seed_generator = keras.random.SeedGenerator(seed, name="noise_seed")

    def build(self, query_embed_shape=None, target_boxes_shape=None, target_labels_shape=None):
        if self.query_groups > 1:
            self.group_query_embed = self.add_weight(
                shape=((self.query_groups - 1) * self.num_queries, self.d_model),
                initializer=standard_normal(),
                name="group_query_embed",
            )
        if self.denoising is not None:
            self.label_embed = self.add_weight(
                shape=(self.num_classes, self.d_model),
                initializer=standard_normal(),
                name="label_embed",
            )
            self.box_embed_0.build((None, 2 * self.d_model))
            self.box_embed_1.build((None, self.d_model))
        self.built = True

    def call(self, query_embed, target_boxes, target_labels):
        labels = ops.cast(target_labels, "int32")
        batch = ops.shape(labels)[0]
        dtype = self.compute_dtype
        positions = [ops.cast(query_embed, dtype)]
        if self.query_groups > 1:
            positions.append(ops.cast(self.group_query_embed, dtype))
        matching = ops.concatenate(positions, axis=0) if len(positions) > 1 else positions[0]
        n_matching = self.query_groups * self.num_queries
        position = ops.broadcast_to(ops.expand_dims(matching, 0), (batch, n_matching, self.d_model))
        content = ops.zeros((batch, n_matching, self.d_model), dtype)
        if self.denoising is not None:
            dn_content, dn_position = self._denoising_queries(target_boxes, labels)
            content = ops.concatenate([content, dn_content], axis=1)
            position = ops.concatenate([position, dn_position], axis=1)
        mask = decoder_attention_mask(
            self.num_queries, self.query_groups, self.dn_groups, labels >= 0
        )
        return {"content": content, "position": position, "attention_mask": mask}

    def _denoising_queries(self, target_boxes, labels):
        config, groups = self.denoising, self.dn_groups
        boxes = ops.tile(ops.cast(target_boxes, "float32"), (1, groups, 1))
        labels = ops.tile(labels, (1, groups))
        shape = ops.shape(labels)
        noised_boxes = noise_boxes(
            boxes,
            keras.random.uniform((shape[0], shape[1], 4), seed=self.seed_generator),
            config.box_noise_scale,
        )
        noised_labels = noise_labels(
            labels,
            keras.random.uniform((shape[0], shape[1]), seed=self.seed_generator),
            keras.random.randint(
                (shape[0], shape[1]), 0, self.num_classes, seed=self.seed_generator
            ),
            config.label_noise_ratio,
        )
        noised_boxes = ops.stop_gradient(noised_boxes)
        noised_labels = ops.stop_gradient(noised_labels)
        dtype = self.compute_dtype
        valid = ops.expand_dims(ops.cast(noised_labels >= 0, dtype), -1)
        table = ops.cast(self.label_embed, dtype)
        content = ops.take(table, ops.maximum(noised_labels, 0), axis=0) * valid
        sine = ops.cast(box_sine_embedding(noised_boxes, self.d_model // 2), dtype)
        position = self.box_embed_1(self.box_embed_0(sine))
        return content, ops.cast(position, dtype)

    def split_outputs(self, outputs):
        """The head's outputs over all training queries -> DETR's training output dict.

        ``logits``/``boxes``/``aux_*``: group 0 (what DETR gives at inference); with query
        groups ``group_logits`` (B, K, Q, C+1), ``group_boxes``, ``group_aux_logits`` (B, L-1,
        K, Q, C+1), ``group_aux_boxes``; with denoising ``dn_logits`` (B, G*T, C+1),
        ``dn_boxes``, ``dn_aux_logits`` (B, L-1, G*T, C+1), ``dn_aux_boxes``.
        """
        q, k = self.num_queries, self.query_groups
        n_matching = q * k
        result = {
            "logits": outputs["logits"][:, :q],
            "boxes": outputs["boxes"][:, :q],
            "aux_logits": outputs["aux_logits"][:, :, :q],
            "aux_boxes": outputs["aux_boxes"][:, :, :q],
        }
        if k > 1:
            for name in ("logits", "boxes"):
                final = outputs[name][:, :n_matching]
                shape = ops.shape(final)
                result[f"group_{name}"] = ops.reshape(final, (shape[0], k, q, shape[-1]))
                aux = outputs[f"aux_{name}"][:, :, :n_matching]
                shape = ops.shape(aux)
                result[f"group_aux_{name}"] = ops.reshape(
                    aux, (shape[0], shape[1], k, q, shape[-1])
                )
        if self.denoising is not None:
            result["dn_logits"] = outputs["logits"][:, n_matching:]
            result["dn_boxes"] = outputs["boxes"][:, n_matching:]
            result["dn_aux_logits"] = outputs["aux_logits"][:, :, n_matching:]
            result["dn_aux_boxes"] = outputs["aux_boxes"][:, :, n_matching:]
        return result

    def options(self):
        """``{"denoising": ..., "query_groups": ...}``: what ``compile`` was given."""
        return {"denoising": self.denoising, "query_groups": self.query_groups}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "num_queries": self.num_queries,
                "d_model": self.d_model,
                "query_groups": self.query_groups,
                "denoising": None if self.denoising is None else self.denoising.get_config(),
                "seed": self.seed,
            }
        )
        return config
