"""Trellis-coded layers: dependent quantization (``coding: "trellis"``, file version 4).

MPEG NNC's dependent quantization (ISO/IEC 15938-17, after VVC): two scalar quantizers share
one step ``step``. ``Q0`` reconstructs even multiples of it (``2 k step``), ``Q1`` odd
multiples and zero (``(2 k - sgn k) step``); a four-state machine driven by the parity of each
integer ``k`` picks the quantizer of the next weight. Each quantizer alone is twice as coarse
as the union of their levels, so an index costs fewer bits, while a trellis search at the
encoder (``compression/trellis.py``) keeps the error close to that of the fine grid: at about
one bit a weight it codes the same squared error in 10-25% fewer bits than one scalar
quantizer (measured on CREPE full's largest layer).

Weights are scanned in runs (a kernel's taps, or a 1x1 / linear layer's input row), the state
restarting at 0 for each run; runs are coded side by side, one position at a time, so that
decoding is vectorized across runs. Per position: a flag (zero, negative, positive) in one of 8
contexts (the quantizer, and the previous position's flag or "first"), then ``|k| - 1`` for
nonzero ``k`` with one histogram per quantizer. Models are semi-static and travel in the file
as in the range codec (``entropy.quantize_count``).
"""
from __future__ import annotations

import math

import numpy as np

from ...errors import ConfigError
from .. import entropy
from .base import (DecodedLayer, LayerError, LayerInput, LayerRecord, bias_bytes, density, index_bits, int_field,
                   int_list, read_bias)

# state, parity of k -> next state (NNC / VVC dependent quantization)
NEXT = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], np.int8)
FIRST = 3            # previous-flag context of a run's first position
N_CONTEXTS = 8       # quantizer (2) x previous flag (zero, negative, positive, first)
MAX_MAGNITUDE = 1 << 12


def run_length(shape) -> int:
    """Positions per trellis run: a kernel's taps, else (1x1 convolutions, linear layers) the
    input row, so that every run is one output's weights over neighbouring inputs."""
    taps = int(math.prod(shape[2:])) if len(shape) > 2 else 1
    return taps if taps > 1 else int(shape[1]) if len(shape) > 1 else 1


def reconstruct(k: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Integer multiple of the step that ``k`` stands for under quantizer ``q`` (0 or 1)."""
    return 2 * k - q * np.sign(k)


def integers(j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk the trellis over runs of multiples ``j`` (rows x positions): (k, quantizer per
    position, whether every ``j`` is one its quantizer has)."""
    rows, n = j.shape
    k = np.zeros(j.shape, np.int64)
    q = np.zeros(j.shape, np.int8)
    state = np.zeros(rows, np.int8)
    ok = True
    for t in range(n):
        qt = state >> 1
        jt = j[:, t]
        kt = np.where(qt == 0, jt // 2, (jt + np.sign(jt)) // 2)
        ok = ok and bool((reconstruct(kt, qt) == jt).all())
        k[:, t], q[:, t] = kt, qt
        state = NEXT[state, kt & 1]
    return k, q, ok


def weights_of(step: float, j: np.ndarray) -> np.ndarray:
    """The float32 weights of multiples ``j``: computed one way, so encoder and decoder agree."""
    return np.float32(step) * j.astype(np.float32)


def flags_of(k: np.ndarray) -> np.ndarray:
    """Each integer's flag: 0 zero, 1 negative, 2 positive."""
    return np.where(k == 0, 0, np.where(k < 0, 1, 2)).astype(np.int8)


def symbols(k: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the stream codes for runs of integers ``k`` under quantizers ``q``: (flags, the
    flag contexts ``4 q + previous flag``, magnitudes ``|k| - 1``)."""
    flags = flags_of(k)
    prev = np.concatenate([np.full((k.shape[0], 1), FIRST, np.int8), flags[:, :-1]], axis=1)
    return flags, (4 * q + prev).astype(np.int8), np.abs(k) - 1


def _table(flags, ctx, mags, q, sizes) -> bytes:
    fh = np.zeros((N_CONTEXTS, 3), np.int64)
    np.add.at(fh, (ctx.reshape(-1), flags.reshape(-1)), 1)
    parts = [entropy.quantize_count(row, int(row.sum())) for row in fh]
    nz = flags != 0
    for quant in (0, 1):
        m = mags[nz & (q == quant)]
        parts.append(entropy.quantize_count(np.bincount(m, minlength=sizes[quant])[:sizes[quant]], max(m.size, 1)))
    return np.concatenate(parts).astype(np.uint8).tobytes()


def _models(table: bytes, sizes) -> tuple[list, list]:
    Categorical, _ = entropy._constriction()
    codes = np.frombuffer(table, np.uint8)
    flag_codes = codes[:3 * N_CONTEXTS].reshape(N_CONTEXTS, 3)
    mag_codes = [codes[3 * N_CONTEXTS:3 * N_CONTEXTS + sizes[0]], codes[3 * N_CONTEXTS + sizes[0]:]]
    flag_models = [Categorical(entropy._probabilities(c), perfect=False) for c in flag_codes]
    mag_models = [Categorical(entropy._probabilities(c), perfect=False) if c.size > 1 else None for c in mag_codes]
    return (flag_codes, mag_codes), (flag_models, mag_models)


class TrellisCodec:
    name = "trellis"
    versions = (4, 5)
    any_levels = True

    def encode(self, layer: LayerInput) -> LayerRecord:
        if layer.step is None or not layer.step > 0:
            raise ConfigError(f"{layer.name}: trellis coding needs the layer's quantization step "
                              "(layers quantized by the trellis quantizer carry it)")
        mask = np.asarray(layer.mask, bool).reshape(-1)
        index = np.asarray(layer.index, np.int64).reshape(-1)
        cb = np.asarray(layer.codebook, np.float32).reshape(-1)
        values = np.where(mask, cb[np.where(mask, index, 0)] if cb.size else 0, 0).astype(np.float32)
        j = np.rint(values.astype(np.float64) / layer.step).astype(np.int64)
        if not np.array_equal(weights_of(layer.step, j), values) or np.abs(j).max(initial=0) > 2 * MAX_MAGNITUDE:
            raise ConfigError(f"{layer.name}: weights are not multiples of the step {layer.step}")
        run = run_length(layer.shape)
        k, q, ok = integers(j.reshape(-1, run))
        if not ok:
            raise ConfigError(f"{layer.name}: weights do not follow the trellis")
        flags, ctx, mags = symbols(k, q)
        nz = flags != 0
        sizes = [int(mags[nz & (q == quant)].max(initial=-1)) + 1 for quant in (0, 1)]
        table = _table(flags, ctx, mags, q, sizes)
        (flag_codes, mag_codes), (flag_models, mag_models) = _models(table, sizes)
        _, queue = entropy._constriction()
        enc = queue.RangeEncoder()
        for t in range(run):
            for c in range(N_CONTEXTS):
                sel = flags[ctx[:, t] == c, t]
                if sel.size:
                    entropy._check_codable(sel, flag_codes[c], "flags")
                    enc.encode(sel.astype(np.int32), flag_models[c])
            for quant in (0, 1):
                sel = mags[nz[:, t] & (q[:, t] == quant), t]
                if sel.size and mag_models[quant] is not None:
                    entropy._check_codable(sel, mag_codes[quant], "magnitudes")
                    enc.encode(sel.astype(np.int32), mag_models[quant])
        stream = enc.get_compressed().astype("<u4").tobytes()
        sections = [bias_bytes(layer.bias, layer.bias_dtype), table, stream]
        meta = {"name": layer.name, "shape": [int(s) for s in layer.shape], "coding": self.name,
                "step": float(np.float32(layer.step)), "run": run, "magnitudes": sizes,
                "k": int(np.unique(j[j != 0]).size), "nnz": int(nz.sum()), "density": density(j != 0),
                "bias": 0 if layer.bias is None else int(np.asarray(layer.bias).size), "bias_dtype": layer.bias_dtype,
                "sizes": [len(s) for s in sections]}
        return LayerRecord(meta, sections)

    def check(self, record: dict, numel: int, n_bias: int) -> list[int]:
        step = record.get("step")
        if not isinstance(step, float) or not math.isfinite(step) or not step > 0:
            raise LayerError(f"trellis step {step!r} is not a positive number")
        run = int_field(record.get("run"), 1, numel, "trellis run")
        if numel % run:
            raise LayerError(f"trellis runs of {run} do not divide {numel} weights")
        mags = int_list(record.get("magnitudes"), 2, "magnitude alphabets")
        if max(mags) > MAX_MAGNITUDE:
            raise LayerError(f"magnitude alphabets {mags} are larger than {MAX_MAGNITUDE}")
        int_field(record.get("nnz"), 0, numel, "kept weights")
        int_field(record.get("k"), 0, numel, "levels")
        if record.get("bias_dtype") not in ("f4", "f2"):
            raise LayerError("unknown bias type")
        int_field(record.get("bias"), n_bias, n_bias, "bias size")
        sizes = int_list(record.get("sizes"), 3, "section sizes")
        if (sizes[0] != (4 if record["bias_dtype"] == "f4" else 2) * n_bias
                or sizes[1] != 3 * N_CONTEXTS + sum(mags) or sizes[2] > 4 * (2 * numel + 4) or sizes[2] % 4):
            raise LayerError(f"section sizes {sizes} do not match the header")
        return sizes

    def decode(self, record: dict, sections: list[bytes], numel: int) -> DecodedLayer:
        bias_b, table, stream = sections
        run, sizes = record["run"], record["magnitudes"]
        rows = numel // run
        _, (flag_models, mag_models) = _models(table, sizes)
        _, queue = entropy._constriction()
        dec = queue.RangeDecoder(np.frombuffer(stream, "<u4").astype(np.uint32))
        j = np.zeros((run, rows), np.int64)  # position-major: each position's column contiguous
        state = np.zeros(rows, np.int8)
        prev = np.full(rows, FIRST, np.int8)
        try:
            for t in range(run):
                q = state >> 1
                ctx = 4 * q + prev
                flags = np.zeros(rows, np.int8)
                for c in range(N_CONTEXTS):
                    where = np.flatnonzero(ctx == c)
                    if where.size:
                        flags[where] = dec.decode(flag_models[c], where.size)
                k = np.zeros(rows, np.int64)
                for quant in (0, 1):
                    where = np.flatnonzero((flags != 0) & (q == quant))
                    if where.size:
                        mag = (dec.decode(mag_models[quant], where.size) if mag_models[quant] is not None
                               else np.zeros(where.size, np.int64))
                        k[where] = (mag.astype(np.int64) + 1) * np.where(flags[where] == 1, -1, 1)
                j[t] = reconstruct(k, q)
                state = NEXT[state, k & 1]
                prev = flags
        except (AssertionError, ValueError, RuntimeError, OverflowError, IndexError) as e:
            raise LayerError(f"stream does not decode ({e})") from None
        j = np.ascontiguousarray(j.T).reshape(-1)
        mask = j != 0
        if int(mask.sum()) != record["nnz"]:
            raise LayerError(f"the stream gives {int(mask.sum())} kept weights, the header says {record['nnz']}")
        weight = weights_of(record["step"], j)
        codebook, inverse = np.unique(weight[mask], return_inverse=True)
        index = np.zeros(numel, np.int16)  # at most 4 * MAX_MAGNITUDE levels
        index[mask] = inverse
        bias = read_bias(bias_b, record["bias_dtype"]) if record["bias"] else None
        return DecodedLayer(weight, bias, codebook.astype(np.float32), index, mask, index_bits(codebook.size))

    def size_row(self, record: dict) -> dict:
        bias, table, stream = record["sizes"]
        return {"codebook": 0, "bias": bias, "code_tables": table, "weight_codes": stream, "position_codes": 0,
                "bits": index_bits(record["k"]), "positions": "trellis", "span": 0, "index_bits": 8 * stream,
                "position_bits": 0}
