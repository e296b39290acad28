"""Runs inside NNCodec's own virtual environment (numpy < 2): encode and decode one state dict.

    python _nncodec_worker.py IN.npz OUT_DIR QP USE_DQ

Writes OUT_DIR/qpQP[_dq].nnc (the bitstream) and OUT_DIR/qpQP[_dq].npz (the decoded tensors).
Tensors travel as .npz files so that neither side unpickles anything of the other's.
"""
import sys
import time
from pathlib import Path

import numpy as np
from nncodec import nnc


def main() -> None:
    src, out_dir, qp, use_dq = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    params = {k: np.ascontiguousarray(v.astype(np.float32)) for k, v in np.load(src).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"qp{qp}{'_dq' if use_dq else ''}"
    start = time.perf_counter()
    bitstream = nnc.compress(params, bitstream_path=str(out_dir / f"{stem}.nnc"), qp=qp, use_dq=use_dq,
                             return_bitstream=True, verbose=False)
    encode_s = time.perf_counter() - start
    (out_dir / f"{stem}.nnc").write_bytes(bytes(bitstream))
    start = time.perf_counter()
    rec = nnc.decompress(bytearray(bitstream), verbose=False)
    decode_s = time.perf_counter() - start
    np.savez(out_dir / f"{stem}.npz", **{k: np.asarray(v, np.float32) for k, v in rec.items()})
    print(f"{stem} {len(bitstream)} {encode_s:.2f} {decode_s:.2f}")


if __name__ == "__main__":
    main()
