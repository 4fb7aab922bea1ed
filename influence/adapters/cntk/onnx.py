"""Loading ONNX files into a Function the adapter can differentiate."""
import numpy as np

from .graph import constants_to_parameters
from .runtime import Quiet, first_line, import_cntk

__all__ = ["load_onnx", "is_onnx"]


#: CNTK's own model format: a protobuf Dictionary whose first entry is its "version".
_CNTK_MAGIC = b"\n\x07version"


def is_onnx(path):
    """``.onnx``, or a protobuf that starts like an ONNX ModelProto (field 1, ir_version) and not like
    CNTK's format (trying CNTK's loader on an ONNX file can abort the process)."""
    if str(path).lower().endswith(".onnx"):
        return True
    with open(path, "rb") as f:
        head = f.read(16)
    return head[:1] == b"\x08" and _CNTK_MAGIC not in head


def load_onnx(path):
    """A Function for the ONNX file ``path`` that the adapter can differentiate.

    CNTK 2.7 imports ONNX initializers as Constants and the batch as a fixed leading dimension of 1
    (inputs without a batch axis). The weights become Parameters
    (:func:`~influence.adapters.cntk.graph.constants_to_parameters`, BatchNormalization statistics
    stay Constants) and each such input is replaced by an input with a batch axis reshaped to the
    file's (1, ...) shape; the output's leading 1 is dropped. A graph that cannot run on a batch
    (e.g. CNTK's ONNX convolutions, built on ToBatchAxis/UnpackBatchAxis) is refused."""
    C = import_cntk()
    try:
        with Quiet():
            f = C.Function.load(str(path), format=C.ModelFormat.ONNX)
    except Exception as e:
        raise ValueError("%s: CNTK 2.7 cannot import this ONNX model (%s); export it with ops CNTK's ONNX "
                         "importer supports, or save the network with Function.save" % (path, first_line(e)))
    subs = {}
    for a in f.arguments:
        if not a.dynamic_axes and len(a.shape) >= 2 and a.shape[0] == 1:
            subs[a] = C.reshape(C.input_variable(a.shape[1:], dtype=a.dtype, name=a.name), a.shape)
    if subs:
        f = f.clone(C.CloneMethod.share, subs)
        if len(f.output.shape) >= 2 and f.output.shape[0] == 1:
            f = C.reshape(f, f.output.shape[1:])
    f = constants_to_parameters(f)
    try:
        with Quiet():
            f.eval({a: np.zeros((1,) + tuple(a.shape), dtype=a.dtype) for a in f.arguments})
    except Exception as e:
        raise ValueError("%s: this ONNX model cannot be evaluated on a batch of examples by CNTK 2.7 (%s); "
                         "save the network with Function.save (CNTK format) instead" % (path, first_line(e)))
    return f
