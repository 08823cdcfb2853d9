"""Runtime support that generated code and backends share.

`torch_layers` holds the torch.nn-compatible layer machinery (LSTM-style layers and cells for any
cell). It imports only torch, math and the standard library, because backends paste its source
verbatim into the single-file modules they generate; nothing here may import the rest of cellc.

`native_calls` holds the argument checks for native kernels (used by llvm_jit.Kernel.run and
native.NativeCell) and the AOT loader's cell class. It imports only ctypes, os and numpy, because
backends/aot.py pastes it into the loader written beside each compiled library.
"""
