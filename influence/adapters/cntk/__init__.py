"""The CNTK adapter: :class:`CNTKModel` (any CNTK network: CNNs, several inputs, sequences, sparse
inputs, ONNX files), the inference-mode graph (``graph``), batched per-example gradients
(``per_example``), the runtime guards around every CNTK call (``runtime``) and the network builders
(``builders``). CNTK itself is imported only when a CNTK object is used."""
from .model import CNTKModel, FunctionGradient, ParameterVector, LOSSES, load_onnx
from .runtime import import_cntk
from .model import build_network, build_cnn

__all__ = ["CNTKModel", "FunctionGradient", "ParameterVector", "import_cntk", "LOSSES", "build_network",
           "build_cnn", "load_onnx"]
