"""TensorFlow's platform and devices."""

import tensorflow as tf


def platform():
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def devices():
    return [d.name for d in tf.config.list_logical_devices()]
