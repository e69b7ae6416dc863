"""A small registered preset model for the preset machinery's tests."""

import keras

from kzoo.presets import PresetMixin


@keras.saving.register_keras_serializable(package="kzoo_tests")
class TinyPresetModel(PresetMixin, keras.Model):
    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="tanh", name="hidden")
        self.out = keras.layers.Dense(2, name="out")

    def call(self, x):
        return self.out(self.hidden(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def build(units=4, seed=0):
    keras.utils.set_random_seed(seed)
    model = TinyPresetModel(units=units)
    model(keras.ops.zeros((1, 3)))
    return model
