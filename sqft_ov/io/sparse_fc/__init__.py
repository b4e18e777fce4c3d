"""Sparse weights that decode faster: a bitmask + packed non-zeros FullyConnected as an OpenVINO extension op.

`pack` turns a pruned weight into the op's constants (bitmask, packed INT8 or INT4 values, row offsets, scales);
`build` compiles the extension library against the installed OpenVINO (once per source and OpenVINO version,
cached); `op` makes the node. `bitmask_gemv.hpp` holds the kernels that `benchmarks/sparse_kernel/` measured.
"""
