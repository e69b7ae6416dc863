"""DETR's convolutional backbone: ResNet in torchvision's v1.5 layout with frozen batch norm.

torchvision's ResNet (the one the released DETR checkpoints were trained with) strides the 3×3
convolution of a stage's first bottleneck, where ``keras.applications.ResNet50`` strides the 1×1;
the weights only load into the v1.5 layout. Batch norm is frozen: its statistics and affine
parameters are constants, exactly ``torchvision.ops.FrozenBatchNorm2d`` (eps 1e-5).

Padding: every convolution pads explicitly and symmetrically (as torch does); keras' ``"same"``
pads stride-2 convolutions of even inputs on one side only, which would shift every feature.

Padded batches: when ``valid_sizes`` (each image's unpadded height and width) is given, features
outside each image's valid region are zeroed before every convolution that looks at neighbours
and before the max pool. The valid region at stride ``s`` is ``ceil(size / s)`` rows and columns
(the size an unpadded image's feature map has), so an image's features are then exactly those it
gets alone, whatever the padding around it.
"""

import functools
import math

import keras
from keras import ops

from kzoo.backends import dispatch
from kzoo.export.mixin import ExportMixin
from kzoo.export.signatures import image_signature
from kzoo.models.detr.model.conv_bn import conv_bn_function, pad_spatial
from kzoo.models.detr.model.initializers import he_normal_fan_out
from kzoo.models.detr.model.stem_pool import stem_max_pool
from kzoo.ops.shapes import arange, ceil_divide
from kzoo.presets import PresetMixin, preset_io

RESNET_BLOCKS = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    # Two bottlenecks in the first stage so that every block kind (with and without a
    # projection shortcut, strided and not) occurs; narrow enough for tests and CPU training.
    "small": (1, 1, 1, 1),
}
BASE_WIDTH = {"resnet50": 64, "resnet101": 64, "small": 16}
EXPANSION = 4
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
BLOCK_KEYS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_0", "downsample_1")


def backbone_channels(name):
    """Channels of the backbone's last feature map (2048 for ResNet-50/101)."""
    return BASE_WIDTH[name] * 8 * EXPANSION


def valid_extent(valid_sizes, stride):
    """``ceil(valid / stride)`` for (B, 2) int sizes: the unpadded feature-map size."""
    return ceil_divide(valid_sizes, stride)


def channels_last():
    return "channels_last"


dispatch.register(
    "conv_data_format",
    dispatch.Implementation(
        name="nhwc",
        target="kzoo.models.detr.model.backbone:channels_last",
        description="channels_last: TensorFlow's CPU convolutions take only NHWC; XLA prefers it",
    ),
    fallback=True,
)


def compute_data_format():
    """The activation layout the backbone computes in (the weights are the same either way)."""
    return dispatch.select("conv_data_format", platform="any").load()()


def region_mask(valid_sizes, stride, height, width, dtype):
    """(B, height, width, 1) mask, 1 inside each image's valid region at ``stride``."""
    extent = valid_extent(valid_sizes, stride)
    rows = ops.expand_dims(arange(height), 0) < extent[:, 0:1]
    cols = ops.expand_dims(arange(width), 0) < extent[:, 1:2]
    mask = ops.logical_and(ops.expand_dims(rows, 2), ops.expand_dims(cols, 1))
    return ops.expand_dims(ops.cast(mask, dtype), -1)


@keras.saving.register_keras_serializable(package="kzoo")
class FrozenBatchNormalization(keras.layers.Layer):
    """Batch normalization with fixed statistics and affine parameters (torchvision's formula).

    ``y = (x - moving_mean) * gamma / sqrt(moving_variance + epsilon) + beta``, with all four
    vectors non-trainable by default (as in DETR's ResNet). ``trainable_affine=True`` lets
    ``gamma`` and ``beta`` train (the small backbone, trained from scratch, needs that: without
    it its convolutions would run without any learnable per-channel scale).

    Args:
        epsilon: Added to the variance; 1e-5 as in torchvision.
        trainable_affine: Whether ``gamma`` and ``beta`` are trainable.
        axis: The channel axis.

    Example:

    ```python
    bn = FrozenBatchNormalization()
    y = bn(np.ones((1, 4, 4, 8), "float32"))
    ```
    """

    def __init__(self, epsilon=1e-5, trainable_affine=False, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(epsilon, (int, float)) or epsilon < 0:
            raise ValueError(f"epsilon must be a number >= 0; got {epsilon!r}.")
        if axis not in (-1, 1, 3):
            raise ValueError(f"axis must be -1, 1 or 3 (the channel axis); got {axis!r}.")
        self.epsilon = float(epsilon)
        self.trainable_affine = bool(trainable_affine)
        self.axis = axis

    def build(self, input_shape):
        channels = input_shape[self.axis]
        if channels is None:
            raise ValueError("FrozenBatchNormalization needs a known number of channels.")
        self.gamma = self.add_weight(
            shape=(channels,), initializer="ones", name="gamma", trainable=self.trainable_affine
        )
        self.beta = self.add_weight(
            shape=(channels,), initializer="zeros", name="beta", trainable=self.trainable_affine
        )
        self.moving_mean = self.add_weight(
            shape=(channels,), initializer="zeros", name="moving_mean", trainable=False
        )
        self.moving_variance = self.add_weight(
            shape=(channels,), initializer="ones", name="moving_variance", trainable=False
        )

    def scale_and_shift(self, dtype):
        """The per-channel ``(scale, shift)`` with ``y = x * scale + shift``."""
        scale = ops.cast(self.gamma, dtype) * ops.rsqrt(
            ops.cast(self.moving_variance, dtype) + self.epsilon
        )
        shift = ops.cast(self.beta, dtype) - ops.cast(self.moving_mean, dtype) * scale
        return scale, shift

    def call(self, inputs):
        scale, shift = self.scale_and_shift(inputs.dtype)
        if self.axis in (1,) and len(inputs.shape) == 4:
            scale = ops.reshape(scale, (1, -1, 1, 1))
            shift = ops.reshape(shift, (1, -1, 1, 1))
        return inputs * scale + shift

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"epsilon": self.epsilon, "trainable_affine": self.trainable_affine, "axis": self.axis}
        )
        return config


def _conv(filters, kernel_size, stride, name, use_bias=False, dilation=1):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding="valid",
        dilation_rate=dilation,
        use_bias=use_bias,
        kernel_initializer=he_normal_fan_out(),
        name=name,
    )


@keras.saving.register_keras_serializable(package="kzoo")
class ResNetBackbone(PresetMixin, ExportMixin, keras.Model):
    """ResNet-50/101 (torchvision v1.5 layout, frozen batch norm) up to the stride-32 features
    (stride 16 with ``dilation=True``).

    Sub-layers are named after torchvision's modules with dots as underscores: ``conv1``,
    ``bn1``, ``layer{s}_{b}_conv{1,2,3}``, ``layer{s}_{b}_bn{1,2,3}``,
    ``layer{s}_0_downsample_0`` (the projection conv) and ``layer{s}_0_downsample_1`` (its norm).

    A model with presets of its own: ``save_to_preset(dir)`` / ``ResNetBackbone.from_preset(dir)``;
    ``from_preset`` also takes a DETR preset (a name such as ``"detr_resnet50_coco"`` or a
    directory) and returns that DETR's backbone with its weights, e.g. to put a COCO-trained
    backbone under a new head: ``DETR(backbone=ResNetBackbone.from_preset("detr_resnet50_coco"))``.

    Args:
        variant: ``"resnet50"``, ``"resnet101"`` or ``"small"`` (bottleneck ResNet with one block
            per stage and base width 16, for tests and CPU training).
        trainable_stages: How many of the last stages train (``layer4``, ``layer3``, ... then the
            stem), 0–5; torchvision's ``trainable_layers``. DETR trains 3 (layer2–layer4).
        trainable_affine: Whether the frozen batch norms' gamma/beta train (their statistics
            never do).
        dilation: DETR-DC5's backbone: the last stage keeps stride 16 and dilates its 3x3
            convolutions instead, as torchvision's ``replace_stride_with_dilation=[False, False,
            True]`` (layer4's first block and its projection shortcut take stride 1; its other
            blocks' 3x3 convolutions have dilation 2 and padding 2). The weights are the same
            tensors; the output has twice the resolution.

    Call arguments:
        images: (B, H, W, 3) normalised images.
        valid_sizes: Optional (B, 2) int32 unpadded (height, width) of each image; when given,
            features outside each image are zeroed (see the module docstring).

    Returns (B, ceil(H/s), ceil(W/s), channels) features, ``s = output_stride`` (32, or 16 with
    ``dilation=True``).

    Example:

    ```python
    backbone = ResNetBackbone("small")
    features = backbone(np.zeros((1, 64, 96, 3), "float32"))  # (1, 2, 3, 512)
    backbone.save_to_preset("presets/small_backbone")
    detr = kzoo.models.DETR(num_classes=3, backbone=ResNetBackbone.from_preset(
        "presets/small_backbone"))
    ```
    """

    @classmethod
    def from_preset(cls, preset, load_weights=True, sha256=None, **kwargs):
        """Load a ``ResNetBackbone`` preset, or the backbone of a DETR preset.

        Args:
            preset: A preset name, directory or archive URL (see ``PresetMixin.from_preset``)
                holding a ``ResNetBackbone``, or a DETR preset whose backbone is one.
            load_weights: ``False`` builds the architecture with fresh weights.
            sha256: Expected sha256 of a URL's archive.
            **kwargs: Config entries to override (``trainable_stages``, ``trainable_affine``).
        """
        preset_dir = preset_io.resolve_preset(preset, sha256=sha256)
        saved = preset_io._registered_class(preset_io._read_config(preset_dir))
        if issubclass(saved, cls):
            return preset_io.load_preset(
                preset_dir, expected_class=cls, load_weights=load_weights, **kwargs
            )
        model = preset_io.load_preset(preset_dir, load_weights=load_weights)
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, cls):
            raise ValueError(
                f"Preset {preset!r} holds a {saved.__name__} without a {cls.__name__} backbone; "
                f"load it with {saved.__name__}.from_preset."
            )
        if not kwargs:
            return backbone
        # Overrides need a fresh instance; the weights are the same variables' values.
        config = {**backbone.get_config(), **kwargs}
        config.pop("name", None)
        fresh = cls.from_config(config)
        fresh.build((None, None, None, 3))
        fresh.set_weights(backbone.get_weights())
        return fresh

    def __init__(
        self,
        variant="resnet50",
        trainable_stages=3,
        trainable_affine=False,
        dilation=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if variant not in RESNET_BLOCKS:
            raise ValueError(f"variant must be one of {', '.join(RESNET_BLOCKS)}; got {variant!r}.")
        if not isinstance(trainable_stages, int) or not 0 <= trainable_stages <= 5:
            raise ValueError(f"trainable_stages must be an int in 0..5; got {trainable_stages!r}.")
        if not isinstance(dilation, bool):
            raise ValueError(f"dilation must be True or False; got {dilation!r}.")
        self.variant = variant
        self.trainable_stages = trainable_stages
        self.trainable_affine = bool(trainable_affine)
        self.dilation = dilation
        self.output_stride = 16 if dilation else 32
        width = BASE_WIDTH[variant]
        self.out_channels = backbone_channels(variant)

        def bn(name):
            return FrozenBatchNormalization(trainable_affine=self.trainable_affine, name=name)

        self.conv1 = _conv(width, 7, 2, "conv1")
        self.bn1 = bn("bn1")
        # Each block is a dict of attribute names; the layers themselves are attributes named
        # like their variables so that keras tracks each exactly once.
        self.block_specs = []
        in_channels = width
        for s, count in enumerate(RESNET_BLOCKS[variant]):
            planes = width * 2**s
            # torchvision's _make_layer with dilate=True: the stage's stride becomes the
            # dilation of every block after the first (the first keeps the previous dilation, 1).
            dilate = dilation and s == 3
            for b in range(count):
                prefix = f"layer{s + 1}_{b}"
                stride = 2 if (b == 0 and s > 0 and not dilate) else 1
                rate = 2 if (dilate and b > 0) else 1
                layers = {
                    "conv1": _conv(planes, 1, 1, f"{prefix}_conv1"),
                    "bn1": bn(f"{prefix}_bn1"),
                    "conv2": _conv(planes, 3, stride, f"{prefix}_conv2", dilation=rate),
                    "bn2": bn(f"{prefix}_bn2"),
                    "conv3": _conv(planes * EXPANSION, 1, 1, f"{prefix}_conv3"),
                    "bn3": bn(f"{prefix}_bn3"),
                }
                if b == 0:
                    layers["downsample_0"] = _conv(
                        planes * EXPANSION, 1, stride, f"{prefix}_downsample_0"
                    )
                    layers["downsample_1"] = bn(f"{prefix}_downsample_1")
                for key, layer in layers.items():
                    setattr(self, f"{prefix}_{key}", layer)
                self.block_specs.append((prefix, s + 1, stride, planes, in_channels))
                in_channels = planes * EXPANSION
        self._apply_trainable()

    def _block_layer(self, prefix, key):
        return getattr(self, f"{prefix}_{key}", None)

    def _apply_trainable(self):
        train_stages = set(STAGES[len(STAGES) - self.trainable_stages :])
        self.conv1.trainable = "stem" in train_stages
        self.bn1.trainable = "stem" in train_stages
        for prefix, stage, _, _, _ in self.block_specs:
            for key in BLOCK_KEYS:
                layer = self._block_layer(prefix, key)
                if layer is not None:
                    layer.trainable = f"layer{stage}" in train_stages

    def build(self, images_shape, valid_sizes_shape=None):
        self.conv1.build((None, None, None, images_shape[-1]))
        self.bn1.build((None, None, None, self.conv1.filters))
        for prefix, _, _, planes, in_channels in self.block_specs:
            layer = functools.partial(self._block_layer, prefix)
            layer("conv1").build((None, None, None, in_channels))
            layer("bn1").build((None, None, None, planes))
            layer("conv2").build((None, None, None, planes))
            layer("bn2").build((None, None, None, planes))
            layer("conv3").build((None, None, None, planes))
            layer("bn3").build((None, None, None, planes * EXPANSION))
            if layer("downsample_0") is not None:
                layer("downsample_0").build((None, None, None, in_channels))
                layer("downsample_1").build((None, None, None, planes * EXPANSION))
        self.built = True

    def call(self, images, valid_sizes=None):
        data_format = compute_data_format()
        channels_first = data_format == "channels_first"
        conv_bn = conv_bn_function()

        def masked(x, stride, nchw=channels_first):
            if valid_sizes is None:
                return x
            shape = ops.shape(x)
            if nchw:
                mask = region_mask(valid_sizes, stride, shape[2], shape[3], x.dtype)
                return x * ops.transpose(mask, (0, 3, 1, 2))
            return x * region_mask(valid_sizes, stride, shape[1], shape[2], x.dtype)

        x = masked(images, 1, nchw=False)
        if channels_first:
            x = ops.transpose(x, (0, 3, 1, 2))
        x = conv_bn(self.conv1, self.bn1, x, 2, 3, data_format, relu=True)
        # Features are >= 0 after the ReLU, so zero padding is the same as torch's -inf padding.
        x = pad_spatial(masked(x, 2), 1, data_format)
        x = stem_max_pool(x, data_format)
        total_stride = 4
        for prefix, _, stride, _, _ in self.block_specs:
            layer = functools.partial(self._block_layer, prefix)
            y = conv_bn(layer("conv1"), layer("bn1"), x, 1, 0, data_format, relu=True)
            y = masked(y, total_stride)
            # Padding = dilation keeps the size (torchvision's conv3x3).
            pad = layer("conv2").dilation_rate[0]
            y = conv_bn(layer("conv2"), layer("bn2"), y, stride, pad, data_format, relu=True)
            shortcut = x
            if layer("downsample_0") is not None:
                shortcut = conv_bn(
                    layer("downsample_0"), layer("downsample_1"), x, stride, 0, data_format
                )
            # relu(bn3(conv3(y)) + shortcut), in one pass where the backend fuses it.
            x = conv_bn(
                layer("conv3"), layer("bn3"), y, 1, 0, data_format, residual=shortcut, relu=True
            )
            total_stride *= stride
        if channels_first:
            x = ops.transpose(x, (0, 2, 3, 1))
        return x

    def export_signature(self):
        """``images`` (batch, height, width, 3), what ``model.export`` and ``kzoo.export`` take
        (an exported backbone serves unpadded batches: no ``valid_sizes``)."""
        return image_signature(with_pixel_mask=False)

    def compute_output_shape(self, images_shape, valid_sizes_shape=None):
        def down(n):
            return None if n is None else math.ceil(n / self.output_stride)

        return (images_shape[0], down(images_shape[1]), down(images_shape[2]), self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "variant": self.variant,
                "trainable_stages": self.trainable_stages,
                "trainable_affine": self.trainable_affine,
                "dilation": self.dilation,
            }
        )
        return config
