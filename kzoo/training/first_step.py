"""A model mixin that builds the optimizer before the first training step is traced."""


class OptimizerBuiltBeforeTracing:
    """Model mixin (before ``keras.Model`` in the bases): ``fit`` and ``train_on_batch`` build
    the optimizer's variables before the first training step runs.

    Without a distribution strategy, keras's TensorFlow trainer leaves the optimizer unbuilt
    until the first step is traced, and a ``tf.function`` whose first trace creates variables
    is traced a second time without them: the first step of every ``fit`` then costs two traces
    (about half of a DETR's first-step time on this machine, 2026-12-07). Building the
    optimizer first gives the same variables, with the same initial values, one trace earlier;
    keras builds it before the step on the other backends anyway. Nothing is built when the
    model is not compiled or one of its layers is not built yet (keras then builds the model
    in the step, and the optimizer with it).

    Example:

    ```python
    class MyModel(OptimizerBuiltBeforeTracing, keras.Model):
        ...
    ```
    """

    def _build_optimizer_before_tracing(self):
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or optimizer.built or not self.compiled:
            return
        if not all(layer.built for layer in self._flatten_layers()):
            return
        optimizer.build(self.trainable_variables)

    def fit(self, *args, **kwargs):
        self._build_optimizer_before_tracing()
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._build_optimizer_before_tracing()
        return super().train_on_batch(*args, **kwargs)
