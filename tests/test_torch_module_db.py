"""torch.nn's own module tests, run against the zoo's layers on both targets.

PyTorch ships the inputs of its module tests in the wheel
(`torch.testing._internal.common_modules.module_db`, which needs the expecttest package). For
nn.RNN, nn.LSTM, nn.GRU and their Cell classes this file takes every entry as torch's own
test/test_modules.py would, and runs it on the class `cellc.load(cells/<cell>.cell, target)`
gives for target torch and llvm:

- every sample input (`module_inputs_func`, with `with_packed_sequence=True` where the function
  takes it): our module, built with the sample's constructor arguments and `load_state_dict`
  from the torch module, gives the same outputs (tensors, PackedSequences, state tuples) and the
  same gradients of the sum of all outputs w.r.t. every input tensor and every parameter
  (float32 1e-5, float64 1e-10);
- every error input (`module_error_inputs_func`): construction or forward raises the exception
  type with a message matching the regex, checked as torch's test_errors does (assertRaisesRegex
  is `isinstance` and `re.search`, as pytest.raises(match=) is). Torch's own module is checked on
  the same entry first, so a harness that drifted from torch's test fails too.

Every sample and error input passes: RNN's nonlinearity is a choice hyper-parameter of
rnn.cell, LSTM's proj_size an optional size of lstm.cell. The test counts them, so none can
drop out unnoticed.
"""

import functools
import inspect
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest", reason="torch's module_db imports it (the test extra has it)")

import cellc

_frozen = torch.backends.flags_frozen()
from torch.testing._internal import common_modules

# common_utils calls torch.backends.disable_global_flags() when imported, after which setting
# torch.backends.cudnn flags raises (tests/test_torch_cuda.py sets them): put the switch back.
if not _frozen:
    setattr(torch.backends, "__allow_nonbracketed_mutation_flag", True)

from torch.nn.utils.rnn import PackedSequence

from layer_parity import TOL

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
TARGETS = ("torch", "llvm")
# torch.nn class -> (zoo cell file, class name in the loaded module)
MODULES = {
    torch.nn.RNN: ("rnn.cell", "RNN"),
    torch.nn.LSTM: ("lstm.cell", "LSTM"),
    torch.nn.GRU: ("gru.cell", "GRU"),
    torch.nn.RNNCell: ("rnn.cell", "RNNCell"),
    torch.nn.LSTMCell: ("lstm.cell", "LSTMCell"),
    torch.nn.GRUCell: ("gru.cell", "GRUCell"),
}
DTYPE = torch.float32  # the samples' dtype, as torch's module tests run by default

INFOS = [info for info in common_modules.module_db if info.module_cls in MODULES]
assert len(INFOS) == len(MODULES), "module_db lost one of torch.nn's recurrent modules"


@functools.cache
def ours(module_cls, target):
    """The zoo's class standing in for torch.nn's `module_cls` on `target`."""
    file, name = MODULES[module_cls]
    return getattr(cellc.load(CELLS_DIR / file, target=target), name)


def _with_rng(fn):
    """fn's result with torch's generator seeded, leaving the global generator as it was
    (samples are drawn at collection, before any test seeds anything)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return fn()


def _samples(info):
    fn = info.module_inputs_func
    extra = {"with_packed_sequence": True}
    if "with_packed_sequence" not in inspect.signature(fn).parameters:
        extra = {}
    return _with_rng(lambda: list(fn(info, device="cpu", dtype=DTYPE, requires_grad=True,
                                     training=False, **extra)))


def _error_inputs(info):
    return _with_rng(lambda: list(info.module_error_inputs_func(
        info, device="cpu", dtype=DTYPE, requires_grad=False, training=False)))


def _shape(a) -> str:
    if isinstance(a, PackedSequence):
        return f"packed{tuple(a.data.shape)}bs{a.batch_sizes.tolist()}"
    if isinstance(a, torch.Tensor):
        return "x".join(map(str, a.shape)) + ("" if a.dtype == DTYPE else f":{a.dtype}")
    if isinstance(a, (tuple, list)):
        return "(" + ",".join(_shape(x) for x in a) + ")"
    return repr(a)


def describe(module_input) -> str:
    """A test id: constructor arguments, then the forward arguments' shapes."""
    c = module_input.constructor_input
    parts = [repr(a) for a in c.args]
    parts += [f"{k}={v!r}" for k, v in c.kwargs.items() if k not in ("device", "dtype")]
    text = ",".join(parts)
    f = module_input.forward_input
    if f is not None:
        text += "-" + ",".join(_shape(a) for a in f.args)
    return text.replace(" ", "")


def _params(entries, kind):
    out = []
    for info in INFOS:
        name = info.module_cls.__name__
        for k, entry in enumerate(entries(info)):
            module_input = entry if kind == "sample" else entry.module_error_input
            for target in TARGETS:
                out.append(pytest.param(info.module_cls, entry, target,
                                        id=f"{target}-{name}-{k:02d}-{describe(module_input)}"))
    return out


# -- sample inputs ------------------------------------------------------------------------------

def _fresh(a, leaves):
    """a with every tensor replaced by a new leaf copy (appended to leaves when it requires
    grad), so each module's backward starts from its own inputs."""
    if isinstance(a, PackedSequence):
        return a._replace(data=_fresh(a.data, leaves))
    if isinstance(a, torch.Tensor):
        t = a.detach().clone().requires_grad_(a.requires_grad)
        if t.requires_grad:
            leaves.append(t)
        return t
    if isinstance(a, (tuple, list)):
        return type(a)(_fresh(x, leaves) for x in a)
    return a


def _tensors(out) -> list:
    """Every tensor of a forward's result, in order (a PackedSequence gives all four fields)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, PackedSequence):
        return [t for t in out if t is not None]
    return [t for x in out for t in _tensors(x)]


def _run(module, forward_input):
    """Outputs, then gradients of their sum w.r.t. the input leaves and every parameter."""
    leaves = []
    args = _fresh(forward_input.args, leaves)
    kwargs = _fresh(forward_input.kwargs, leaves)
    outs = _tensors(module(*args, **kwargs))
    params = dict(module.named_parameters())
    loss = sum(t.sum() for t in outs if t.is_floating_point())
    grads = torch.autograd.grad(loss, leaves + list(params.values()))
    named = {f"grad input {k}": g for k, g in enumerate(grads[:len(leaves)])}
    named.update({f"grad {n}": g for n, g in zip(params, grads[len(leaves):])})
    return {**{f"output {k}": t.detach() for k, t in enumerate(outs)}, **named}


@pytest.mark.parametrize("module_cls, sample, target", _params(_samples, "sample"))
def test_sample_matches_torch(module_cls, sample, target):
    c = sample.constructor_input
    torch.manual_seed(0)
    ref = module_cls(*c.args, **c.kwargs).to(DTYPE)
    layer = ours(module_cls, target)(*c.args, **c.kwargs).to(DTYPE)
    assert list(layer.state_dict()) == list(ref.state_dict())
    layer.load_state_dict(ref.state_dict())
    got, want = _run(layer, sample.forward_input), _run(ref, sample.forward_input)
    assert got.keys() == want.keys()
    for key, w in want.items():
        tol = TOL.get(w.dtype, 0)  # integer fields of a PackedSequence: equal
        torch.testing.assert_close(got[key], w, atol=tol, rtol=tol,
                                   msg=lambda m, k=key: f"{k}: {m}")


# -- error inputs -------------------------------------------------------------------------------

def _raises(module_cls, error_input):
    """Construct (and for a forward error, call) module_cls as torch's test_errors does."""
    module_input = error_input.module_error_input
    c = module_input.constructor_input
    expect = pytest.raises(error_input.error_type, match=error_input.error_regex)
    if error_input.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
        with expect:
            module_cls(*c.args, **c.kwargs)
    else:  # a forward error: construction must succeed
        m = module_cls(*c.args, **c.kwargs)
        with expect:
            m(*module_input.forward_input.args, **module_input.forward_input.kwargs)


@pytest.mark.parametrize("module_cls, error_input, target", _params(_error_inputs, "error"))
def test_error_input_raises_as_torch(module_cls, error_input, target):
    _raises(module_cls, error_input)  # torch's own module: the harness reproduces its test
    _raises(ours(module_cls, target), error_input)


def test_every_entry_is_collected():
    """torch 2.13's module_db has 135 samples and 58 error inputs for these six classes; each
    runs on both targets above (a new torch may change the counts: update them then)."""
    assert len(_params(_samples, "sample")) == 135 * len(TARGETS)
    assert len(_params(_error_inputs, "error")) == 58 * len(TARGETS)
