"""What lets a DETR carry its training-only queries (denoising queries, query groups).

``DETR.compile(denoising=..., query_groups=...)`` attaches one layer,
``kzoo.models.detr.training.training_queries.DETRTrainingQueries``, after the model is built;
its train step hands the targets to ``call`` (under ``TARGETS_KEY``) so the extra queries can
be built from them; ``without_training_queries()`` hides the layer while a preset is saved, so
presets stay plain DETRs.
"""

import contextlib

import keras

TARGETS_KEY = "targets"


def _seed_from_global():
    """A seed for the training noise drawn from keras' global generator: reproducible after
    ``keras.utils.set_random_seed``."""
    return int(keras.ops.convert_to_numpy(keras.random.randint((), 0, 2**31 - 1)))


class TrainingQueriesHost:
    """Mixin of ``DETR``: attaches, feeds and hides the training-only queries."""

    _training_queries_active = False

    def _set_training_queries(self, denoising, query_groups):
        from kzoo.models.detr.training.training_queries import (
            DETRTrainingQueries,
            as_denoising_config,
        )

        denoising = as_denoising_config(denoising)
        if isinstance(query_groups, bool) or not isinstance(query_groups, int) or query_groups < 1:
            raise ValueError(f"query_groups must be an int >= 1; got {query_groups!r}.")
        active = denoising is not None or query_groups > 1
        existing = getattr(self, "training_queries", None)
        wanted = {"denoising": denoising, "query_groups": query_groups}
        if active and existing is not None and existing.options() != wanted:
            raise ValueError(
                f"This DETR was compiled with {existing.options()}; its training-only weights "
                f"are built for those. To train with {wanted}, compile a fresh model (e.g. "
                "DETR.from_preset of this one saved with save_to_preset)."
            )
        if active and existing is None:
            if not self.built:
                self.build()
            layer = DETRTrainingQueries(
                self.num_classes,
                self.num_queries,
                self.d_model,
                query_groups=query_groups,
                denoising=denoising,
                seed=_seed_from_global(),
                name="training_queries",
            )
            layer.build()
            with self._state_unlocked():
                self.training_queries = layer
        self._training_queries_active = active

    def train_step(self, *args):
        """Keras' train step; with training-only queries, the targets also go to ``call``.

        ``args`` are the backend trainer's (``(state, data)`` on JAX, ``(data,)`` elsewhere).
        """
        if not self._training_queries_active:
            return super().train_step(*args)
        *state, data = args
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(
                "Training with denoising queries or query groups needs targets: fit(x, y) or "
                "a dataset of (inputs, targets)."
            )
        x = dict(x) if isinstance(x, dict) else {"images": x}
        x[TARGETS_KEY] = y
        return super().train_step(*state, keras.utils.pack_x_y_sample_weight(x, y, sample_weight))

    @contextlib.contextmanager
    def _state_unlocked(self):
        # A built model refuses new state; the training-only queries are attached (and hidden
        # for saving) after build by design, so the lock is lifted around just that.
        self._tracker.unlock()
        try:
            yield
        finally:
            self._tracker.lock()

    @contextlib.contextmanager
    def without_training_queries(self):
        """Within it, the model saves (``save_weights``, presets) as if it had never been
        compiled with training-only queries; backups made outside it keep them."""
        layer = getattr(self, "training_queries", None)
        if layer is None:
            yield self
            return
        # Keras saves the layers it finds as attributes and in ``model.layers``: the layer
        # leaves both for the duration (its variables are neither created nor dropped).
        with self._state_unlocked():
            self._tracker.untrack(layer)
            delattr(self, "training_queries")
        try:
            yield self
        finally:
            with self._state_unlocked():
                self.training_queries = layer
