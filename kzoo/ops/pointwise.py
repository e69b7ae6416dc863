"""A 1x1 convolution (channels last) as one matrix product over the flattened feature map.

Written in keras.ops, so backends build on it too: it lives in ``kzoo/backends/common/pointwise.py``
(a layer below ``ops``) and is public here.
"""

from kzoo.backends.common.pointwise import pointwise_conv

__all__ = ["pointwise_conv"]
