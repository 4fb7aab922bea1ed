"""Network builders: the MLPs and CNNs of ``influence train --arch`` and the examples."""
import numpy as np

from .runtime import import_cntk

__all__ = ["build_network", "build_cnn", "ACTIVATIONS"]

ACTIVATIONS = ("tanh", "relu", "sigmoid", "softplus")


def builder_checks(dtype, activation):
    """(cntk, dtype) after the checks the network builders share."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError("dtype=%s is not supported by the CNTK adapter; pass float32 or float64" % dtype)
    if activation not in ACTIVATIONS:
        raise ValueError("activation=%r is not one of %s" % (activation, ", ".join(ACTIVATIONS)))
    return import_cntk(), dtype


def build_network(n_features, n_outputs, hidden=(), activation="tanh", dtype=np.float32, seed=0):
    """A CNTK multilayer perceptron: an input of ``n_features`` (an int, or a shape tuple such as
    (8, 8) — the first Dense layer consumes the whole tensor), Dense hidden layers of sizes ``hidden``
    with ``activation``, and a linear output layer of ``n_outputs`` (logits). ``hidden=()`` is
    softmax/logistic regression. Weights are Glorot-uniform with the given ``seed``."""
    C, dtype = builder_checks(dtype, activation)
    act = getattr(C, activation)
    with C.default_options(dtype=dtype):
        shape = tuple(int(s) for s in n_features) if isinstance(n_features, (tuple, list)) else int(n_features)
        x = C.input_variable(shape, dtype=dtype, name="features")
        h = x
        for i, width in enumerate(hidden):
            h = C.layers.Dense(int(width), activation=act, init=C.glorot_uniform(seed=seed + i),
                               name="hidden%d" % (i + 1))(h)
        z = C.layers.Dense(int(n_outputs), activation=None, init=C.glorot_uniform(seed=seed + len(hidden)),
                           name="output")(h)
    return z


def build_cnn(input_shape, n_outputs, channels=(8,), dropout=0.3, activation="relu", pooling="max",
              dtype=np.float32, seed=0):
    """A small CNTK convolutional network of the kind the CNTK tutorials build: for each entry of
    ``channels``, ``Convolution2D((3, 3), c, pad=True)`` → ``BatchNormalization(map_rank=1)`` →
    ``activation`` (relu by default) → ``MaxPooling((2, 2), strides=(2, 2))`` (``pooling="average"``:
    AveragePooling; tanh + average pooling make the network smooth, see docs/your-network.md); then
    ``Dropout(dropout)`` (none when 0) and a linear ``Dense(n_outputs)`` (logits). ``input_shape`` is (C, H, W). Weights are Glorot-uniform with
    ``seed``. Influence is computed in inference mode (see :class:`CNTKModel`)."""
    C, dtype = builder_checks(dtype, activation)
    if pooling not in ("max", "average"):
        raise ValueError("pooling=%r is not 'max' or 'average'" % (pooling,))
    act = getattr(C, activation)
    pool = C.layers.MaxPooling if pooling == "max" else C.layers.AveragePooling
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3:
        raise ValueError("input_shape=%s is not (channels, height, width); reshape images to (n, C, H, W)"
                         % (input_shape,))
    with C.default_options(dtype=dtype):
        x = C.input_variable(input_shape, dtype=dtype, name="features")
        h = x
        for i, c in enumerate(channels):
            h = C.layers.Convolution2D((3, 3), int(c), pad=True, init=C.glorot_uniform(seed=seed + i),
                                       name="conv%d" % (i + 1))(h)
            h = C.layers.BatchNormalization(map_rank=1, name="bn%d" % (i + 1))(h)
            h = act(h)
            h = pool((2, 2), strides=(2, 2), name="pool%d" % (i + 1))(h)
        if dropout:
            h = C.layers.Dropout(float(dropout), seed=seed, name="dropout")(h)
        z = C.layers.Dense(int(n_outputs), activation=None, init=C.glorot_uniform(seed=seed + len(channels)),
                           name="output")(h)
    return z
