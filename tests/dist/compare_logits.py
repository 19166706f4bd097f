"""Compares the `logits` tensors (F32) of two safetensors files written by `m2 run --logits-out`:
prints max |a - b| / max |b| and exits 1 when it exceeds the tolerance or the shapes differ."""
import json
import struct
import sys


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        t = header["logits"]
        assert t["dtype"] == "F32", t
        begin, end = t["data_offsets"]
        f.seek(8 + n + begin)
        data = f.read(end - begin)
    return t["shape"], struct.unpack(f"<{len(data) // 4}f", data)


(shape_a, a), (shape_b, b) = load(sys.argv[1]), load(sys.argv[2])
if shape_a != shape_b:
    print(f"shapes {shape_a} and {shape_b} differ")
    sys.exit(1)
scale = max(abs(x) for x in b)
err = max(abs(x - y) for x, y in zip(a, b)) / scale
print(f"max relative difference {err:.2e}")
sys.exit(0 if err <= float(sys.argv[3]) else 1)
