"""Retraining from scratch: re-initialise with a seed, then train with the model's recipe.

What TRAK, dattri and kronfluence retrain on for their LDS: the question "what would training on the
subset have given?", with the training run's own randomness (initialisation, shuffling, Dropout)
averaged over ``seeds`` runs per subset.

**Re-initialisation** (:func:`reinitialise`), as CNTK's layers initialise by default, drawn from the
seed: weights of rank ≥ 2 (Dense, Convolution, the LSTM's W and H) glorot_uniform, U(−a, a) with
a = sqrt(6 / (fan_in + fan_out)) (Dense W (in, out): fan_in = in, fan_out = out; Convolution W (O, I,
kh, kw): fan_in = I·kh·kw, fan_out = O·kh·kw); biases (``b``, ``bias``) and other vectors 0;
BatchNormalization ``scale`` 1; its running statistics (Constants named ``aggregate_*``) 0, as a new
layer starts. Or ``init``: the weights of a saved initial model (a flat vector, or a CNTK file with
the same parameters), when the network was initialised otherwise.

**Training** (:func:`train_recipe`): CNTK's ``Trainer`` with a learner from a :class:`Recipe`
(``"adam lr=0.01 momentum=0.9 epochs=8 minibatch=64"``; learners sgd, momentum_sgd, adam, adagrad,
rmsprop), on the user's TRAINING graph (Dropout drawing masks, BatchNormalization updating its
running statistics, as the user trained) with the loss the model names, minibatches shuffled by
``RandomState(seed)``. Or a callable ``train_fn(function, dataset, seed)`` that trains the CNTK
Function in place (the user's own loop). A NumPy reference model (convex) is fitted from zeros with
L-BFGS to ``gtol``: every seed reaches the same optimum.

The caller (:mod:`influence.evaluate.retrain`) saves and restores every Parameter and Constant.
"""
import collections

import numpy as np

from ..common.errors import InfluenceError, param
from ..fitting import minimize_lbfgs

__all__ = ["Recipe", "parse_recipe", "reinitialise", "train_recipe", "scratch_train", "LEARNERS",
           "DEFAULT_RECIPE", "saved_state", "restore_state"]

#: Learners a recipe may name: CNTK's, and "lbfgs" (full-batch L-BFGS to the evaluation's gtol, in
#: inference mode: what ``influence train`` does, the recipe it records).
LEARNERS = ("sgd", "momentum_sgd", "adam", "adagrad", "rmsprop", "lbfgs")

Recipe = collections.namedtuple("Recipe", "learner lr momentum epochs minibatch")
Recipe.__doc__ = """A training recipe: ``learner`` (one of :data:`LEARNERS`), learning rate ``lr``,
``momentum`` (momentum_sgd, adam), ``epochs``, ``minibatch`` size."""

#: The recipe when none is given.
DEFAULT_RECIPE = "adam lr=0.01 momentum=0.9 epochs=8 minibatch=64"
_KEYS = {"lr": float, "momentum": float, "epochs": int, "minibatch": int}


def parse_recipe(text):
    """A :class:`Recipe` from ``"LEARNER key=value ..."`` (keys lr, momentum, epochs, minibatch), or
    the Recipe itself; a one-line InfluenceError naming ``recipe`` otherwise."""
    if isinstance(text, Recipe):
        return text
    example = param("recipe", DEFAULT_RECIPE)
    words = str(text).split()
    if not words or words[0] not in LEARNERS:
        raise InfluenceError("%s: start with a learner (%s), e.g. %s" % (param("recipe", text), ", ".join(LEARNERS),
                                                                         example), parameter="recipe")
    values = {"lr": 0.01, "momentum": 0.9, "epochs": 8, "minibatch": 64}
    for word in words[1:]:
        key, _, value = word.partition("=")
        if key not in _KEYS or not value:
            raise InfluenceError("%s: %r is not key=value with a key among %s, e.g. %s"
                                 % (param("recipe", text), word, ", ".join(sorted(_KEYS)), example), parameter="recipe")
        try:
            values[key] = _KEYS[key](value)
        except ValueError:
            raise InfluenceError("%s: %s=%r is not a number" % (param("recipe", text), key, value), parameter="recipe")
    if values["lr"] <= 0 or values["epochs"] < 1 or values["minibatch"] < 1 or not 0 <= values["momentum"] < 1:
        raise InfluenceError("%s: need lr > 0, epochs >= 1, minibatch >= 1, 0 <= momentum < 1, e.g. %s"
                             % (param("recipe", text), example), parameter="recipe")
    return Recipe(words[0], values["lr"], values["momentum"], values["epochs"], values["minibatch"])


def _cntk_function(model):
    """The user's training-mode network output of a CNTKModel (None for other models)."""
    return getattr(model, "output", None) if hasattr(model, "loss_function") else None


def _all_variables(function):
    return list(function.parameters) + [c for c in function.constants if c.name.startswith("aggregate_")]


def saved_state(model):
    """Exact copies of what a scratch retraining changes: the weights, and for a CNTK model every
    Parameter and BatchNormalization running statistic of its training graph."""
    f = _cntk_function(model)
    if f is None:
        return model.get_params()
    return [(v, np.array(v.value, copy=True)) for v in _all_variables(f)]


def restore_state(model, state):
    """Put back what :func:`saved_state` copied, bit-identically."""
    if isinstance(state, np.ndarray):
        model.set_params(state)
        return
    for v, value in state:
        v.value = value


def _glorot(shape, rng):
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        fan_in, fan_out = shape
    else:
        receptive = int(np.prod(shape[2:]))
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape)


def reinitialise(model, seed, init=None):
    """Set the model's parameters to a fresh initialisation from ``seed`` (module docstring), or to
    ``init`` (a flat weight vector, or a CNTK model file with the same parameters)."""
    f = _cntk_function(model)
    if init is not None:
        if isinstance(init, str):
            from ..adapters.cntk import CNTKModel
            init = CNTKModel.load(init, loss=model.loss_name).get_params()
        model.set_params(np.asarray(init))
        if f is not None:
            for c in _all_variables(f)[len(f.parameters):]:
                c.value = np.zeros(c.shape, dtype=c.dtype)
        return
    if f is None:
        model.set_params(np.zeros(model.n_params, dtype=model.dtype))
        return
    rng = np.random.RandomState(seed)
    for v in _all_variables(f):
        dtype = np.dtype(v.dtype)
        if v.is_constant:
            value = np.zeros(v.shape, dtype=dtype)
        elif v.name == "scale":
            value = np.ones(v.shape, dtype=dtype)
        elif len(v.shape) >= 2 and v.name not in ("b", "bias"):
            value = _glorot(v.shape, rng).astype(dtype)
        else:
            value = np.zeros(v.shape, dtype=dtype)
        v.value = value


def _learner(C, params, recipe):
    lr = C.learning_parameter_schedule(recipe.lr)
    if recipe.learner == "sgd":
        return C.sgd(params, lr)
    if recipe.learner == "momentum_sgd":
        return C.momentum_sgd(params, lr, C.momentum_schedule(recipe.momentum))
    if recipe.learner == "adam":
        return C.adam(params, lr, C.momentum_schedule(recipe.momentum))
    if recipe.learner == "adagrad":
        return C.adagrad(params, lr)
    return C.rmsprop(params, lr, gamma=0.95, inc=1.2, dec=0.7, max=10.0, min=1e-4)


def _training_loss(C, z, loss):
    """(label input, per-example training loss of the output ``z``) for the model's loss name."""
    dtype = np.dtype(z.output.dtype)
    k = int(np.prod(z.output.shape))
    if loss == "cross_entropy":
        lab = C.input_variable(k, dtype=dtype, name="recipe_labels")
        return lab, C.cross_entropy_with_softmax(z, lab)
    lab = C.input_variable(z.output.shape, dtype=dtype, name="recipe_targets")
    if loss == "binary_cross_entropy":
        return lab, C.reduce_sum(C.log_add_exp(C.constant(0, dtype=dtype), z) - lab * z)
    return lab, C.squared_error(z, lab)


def _rows(part, rows, dtype):
    if hasattr(part, "to_list"):                 # Sequences: one array per example
        seqs = part.subset(rows).to_list()
        return [np.asarray(s, dtype=dtype) for s in seqs]
    return np.asarray(part[rows], dtype=dtype)


def train_recipe(model, train, recipe, seed):
    """Train a CNTKModel's network in place with CNTK's Trainer and the ``recipe`` (module docstring)."""
    from ..adapters.cntk import import_cntk
    C = import_cntk()
    z = _cntk_function(model)
    if z is None or model.loss_name is None:
        raise InfluenceError("retraining from scratch with a recipe needs a model built from the network output "
                             "and loss=NAME; for a loss Function pass %s" % param("train_fn", "FILE.py:NAME"),
                             parameter="train_fn")
    recipe = parse_recipe(recipe)
    if len(z.arguments) != 1 or isinstance(train.x, dict):
        raise InfluenceError("the recipe trains networks with one input; for several inputs pass %s"
                             % param("train_fn", "FILE.py:NAME"), parameter="train_fn")
    dtype = np.dtype(z.output.dtype)
    lab, loss = _training_loss(C, z, model.loss_name)
    trainer = C.Trainer(z, (loss, None), [_learner(C, z.parameters, recipe)])
    y = np.asarray(train.y)
    targets = np.eye(int(np.prod(z.output.shape)), dtype=dtype)[y] if model.loss_name == "cross_entropy" \
        else y.astype(dtype).reshape((len(y),) + tuple(z.output.shape))
    rng = np.random.RandomState(seed)
    n = len(train)
    for _ in range(recipe.epochs):
        order = rng.permutation(n)
        for a in range(0, n, recipe.minibatch):
            rows = np.sort(order[a:a + recipe.minibatch])
            trainer.train_minibatch({z.arguments[0]: _rows(train.x, rows, dtype), lab: targets[rows]})


def scratch_train(model, train, seed, recipe=None, train_fn=None, init=None, gtol=1e-6, maxiter=2000):
    """Re-initialise from ``seed`` (or ``init``) and train on ``train``: ``train_fn(function, dataset,
    seed)``, else the ``recipe`` with CNTK's Trainer, else (NumPy models) L-BFGS from zeros to ``gtol``.
    Returns the final ‖∇R‖ of L-BFGS, or NaN (a recipe has no optimum to report)."""
    reinitialise(model, seed, init)
    f = _cntk_function(model)
    if train_fn is not None:
        train_fn(f if f is not None else model, train, int(seed))
        return float("nan")
    if f is None or (recipe is not None and parse_recipe(recipe).learner == "lbfgs"):
        res = minimize_lbfgs(model, train, len(train), gtol, maxiter, 30)
        return float(np.linalg.norm(res.jac))
    train_recipe(model, train, DEFAULT_RECIPE if recipe is None else recipe, seed)
    return float("nan")
