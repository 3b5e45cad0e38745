#!/usr/bin/env python3
"""Check that tapegrad's safetensors files interoperate with PyTorch.

Not run by the test suite (it needs torch and the `safetensors` Python package:
`pip install safetensors`). Usage:

    # 1. Rust -> PyTorch: load a file written by tapegrad::io::save_safetensors
    python3 scripts/check_safetensors_interop.py read FILE.safetensors

    # 2. PyTorch -> Rust: write a file with safetensors.torch.save_file, then load it
    #    with tapegrad::io::load_safetensors::<f32> (or ::<f64> with --f64)
    python3 scripts/check_safetensors_interop.py write FILE.safetensors [--f64]

`read` prints each tensor's name, dtype, shape, and its first values, and checks
that -0.0 and NaN payloads survived if the file has a tensor named `special`
(the one the docs/data.md recipe writes). `write` saves a small set of tensors
whose values are a known function of their index: x[i] = (i - 3) / 4 in row-major
order, so the Rust side can check every element exactly.
"""
import struct
import sys

import torch
from safetensors.torch import load_file, save_file


def read(path: str) -> None:
    tensors = load_file(path)
    for name in sorted(tensors):
        t = tensors[name]
        flat = t.flatten()
        print(f"{name}: dtype={t.dtype} shape={list(t.shape)} first={flat[:6].tolist()}")
    if "special" in tensors:
        t = tensors["special"]
        fmt, to_int = ("<f", "<I") if t.dtype == torch.float32 else ("<d", "<Q")
        bits = [struct.unpack(to_int, struct.pack(fmt, v))[0] for v in t.flatten().tolist()]
        print("special bits:", [hex(b) for b in bits])


def write(path: str, dtype: torch.dtype) -> None:
    def known(*shape):
        n = 1
        for d in shape:
            n *= d
        return ((torch.arange(n, dtype=torch.float64) - 3) / 4).to(dtype).reshape(shape)

    tensors = {
        "conv1.weight": known(4, 1, 3, 3),
        "conv1.bias": known(4),
        "fc.weight": known(10, 16),
        "scalar": known(),
    }
    save_file(tensors, path)
    for name in sorted(tensors):
        print(f"wrote {name}: dtype={tensors[name].dtype} shape={list(tensors[name].shape)}")


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] not in ("read", "write"):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "read":
        read(sys.argv[2])
    else:
        write(sys.argv[2], torch.float64 if "--f64" in sys.argv[3:] else torch.float32)
    return 0


if __name__ == "__main__":
    sys.exit(main())
