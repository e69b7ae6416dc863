"""Load an exported artifact in the runtime that serves it, and run it on numpy inputs.

- ``saved_model``: ``tf.saved_model.load`` and its ``serving_default`` signature (what
  TensorFlow Serving calls);
- ``onnx``: ``onnxruntime.InferenceSession`` on the CPU;
- ``litert``: the LiteRT interpreter (``ai_edge_litert``, else TensorFlow's ``tf.lite``), through
  its ``serving_default`` signature runner, which resizes the inputs for each call.

None of them needs keras or kzoo: the artifact is the whole model. Each runtime is imported on
first use, so this module costs nothing until an artifact is loaded.
"""

import os

import numpy as np

RUNTIMES = {
    "saved_model": "tf.saved_model.load (TensorFlow), serving_default signature",
    "onnx": "onnxruntime.InferenceSession, CPUExecutionProvider",
    "litert": "LiteRT interpreter (ai_edge_litert), serving_default signature runner",
}


class Artifact:
    """An exported model loaded in its runtime; call it with numpy inputs.

    ``artifact(inputs)`` takes a dict by input name (or one array when there is one input)
    and returns a dict of numpy arrays by output name.
    """

    format = None

    def __init__(self, path):
        self.path = os.fspath(path)
        self.input_names = []
        self.output_names = []

    def _named(self, inputs):
        if not isinstance(inputs, dict):
            if len(self.input_names) != 1:
                raise ValueError(
                    f"This {self.format} artifact takes {len(self.input_names)} inputs "
                    f"{self.input_names}; pass a dict by name."
                )
            inputs = {self.input_names[0]: inputs}
        missing = set(self.input_names) - set(inputs)
        extra = set(inputs) - set(self.input_names)
        if missing or extra:
            raise ValueError(
                f"This {self.format} artifact takes inputs {sorted(self.input_names)}; got "
                f"{sorted(inputs)}."
            )
        return {k: np.asarray(v) for k, v in inputs.items()}

    def __call__(self, inputs):
        raise NotImplementedError

    def __repr__(self):
        return (
            f"<{type(self).__name__} {self.path!r} inputs={self.input_names} "
            f"outputs={self.output_names}>"
        )


class SavedModelArtifact(Artifact):
    format = "saved_model"

    def __init__(self, path):
        super().__init__(path)
        import tensorflow as tf

        self._tf = tf
        # Keep the loaded object: its signature functions reference its variables, which are
        # freed with it.
        self._loaded = tf.saved_model.load(self.path)
        self._fn = self._loaded.signatures["serving_default"]
        _, kwargs = self._fn.structured_input_signature
        self._specs = dict(kwargs)
        self.input_names = sorted(self._specs)
        self.output_names = sorted(self._fn.structured_outputs)

    def __call__(self, inputs):
        inputs = self._named(inputs)
        tensors = {
            k: self._tf.convert_to_tensor(v, dtype=self._specs[k].dtype) for k, v in inputs.items()
        }
        return {k: v.numpy() for k, v in self._fn(**tensors).items()}


class OnnxArtifact(Artifact):
    format = "onnx"

    def __init__(self, path):
        super().__init__(path)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            self.path, options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name: i for i in self._session.get_inputs()}
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def __call__(self, inputs):
        inputs = self._named(inputs)
        feed = {
            k: v.astype(_onnx_dtype(self._inputs[k].type), copy=False) for k, v in inputs.items()
        }
        return dict(zip(self.output_names, self._session.run(self.output_names, feed)))


def _onnx_dtype(type_name):
    # "tensor(float)" -> float32, ...
    kind = type_name[len("tensor(") : -1]
    return {"float": np.float32, "double": np.float64, "int32": np.int32, "int64": np.int64}.get(
        kind, np.float32
    )


def _litert_interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's own copy of the interpreter
        from tensorflow.lite.python.interpreter import Interpreter
    return Interpreter(model_path=path)


class LiteRTArtifact(Artifact):
    format = "litert"

    def __init__(self, path):
        super().__init__(path)
        self._interpreter = _litert_interpreter(self.path)
        signatures = self._interpreter.get_signature_list()
        key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
        self._runner = self._interpreter.get_signature_runner(key)
        details = self._runner.get_input_details()
        self._dtypes = {k: d["dtype"] for k, d in details.items()}
        self.input_names = sorted(signatures[key]["inputs"])
        self.output_names = sorted(signatures[key]["outputs"])

    def __call__(self, inputs):
        inputs = self._named(inputs)
        feed = {k: v.astype(self._dtypes[k], copy=False) for k, v in inputs.items()}
        return {k: np.asarray(v) for k, v in self._runner(**feed).items()}


_ARTIFACTS = {"saved_model": SavedModelArtifact, "onnx": OnnxArtifact, "litert": LiteRTArtifact}


def load(path, format):
    """Load the artifact at ``path`` (written in ``format``) in its runtime."""
    if format not in _ARTIFACTS:
        raise ValueError(
            f"Unknown export format {format!r}; supported formats: {', '.join(_ARTIFACTS)}."
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"No exported model at {os.fspath(path)!r}.")
    return _ARTIFACTS[format](path)
