"""A pruned weight as the SparseFullyConnected op reads it (layout: `bitmask_gemv.hpp`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sqft_ov.errors import ConfigError

VALUE_BITS = (8, 4)


@dataclass
class PackedWeight:
    """The op's four constants for one weight W [N, K], and the integer codes they stand for."""

    mask: np.ndarray  # u8 [N, K/8], bit i of byte j: weight 8j+i is non-zero
    values: np.ndarray  # u8 [bytes]: the non-zeros in row order, padded by 64 bytes
    offsets: np.ndarray  # i32 [N]: where each row's values start (the CPU plugin keeps no i64 constants)
    scales: np.ndarray  # f16 [N] (INT8) or [N, K/64] (INT4), as OpenVINO stores weight scales
    bits: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape[0], 8 * self.mask.shape[1]

    @property
    def nbytes(self) -> int:
        return self.mask.nbytes + self.values.nbytes + self.offsets.nbytes + self.scales.nbytes

    def codes(self) -> np.ndarray:
        """The integer code of every weight, zeros where pruned (int8 [N, K]): what the op multiplies."""
        n, k = self.shape
        mask = np.unpackbits(self.mask, axis=1, bitorder="little").astype(bool)
        codes = np.zeros((n, k), np.int8)
        if self.bits == 8:
            codes[mask] = self.values[: int(mask.sum())].view(np.int8)
            return codes
        blocks = mask.reshape(-1, 64)
        counts = blocks.sum(axis=1)
        start = np.concatenate([[0], np.cumsum(counts + counts % 2)[:-1]])
        position = start[:, None] + np.cumsum(blocks, axis=1) - 1
        nibbles = np.stack([self.values & 0x0F, self.values >> 4], axis=1).reshape(-1)
        signed = np.where(nibbles >= 8, nibbles.astype(np.int16) - 16, nibbles).astype(np.int8)
        codes.reshape(-1, 64)[blocks] = signed[position[blocks]]
        return codes

    def dequantized(self) -> np.ndarray:
        """The float weight the op computes with (before the input's own INT8 rounding)."""
        scales = self.scales.astype(np.float32)
        scales = scales[:, None] if self.bits == 8 else np.repeat(scales, 64, axis=1)
        return self.codes().astype(np.float32) * scales


def pack(weight: np.ndarray, bits: int) -> PackedWeight:
    """Quantize the non-zeros of `weight` [N, K] symmetrically (INT8: a scale per row; INT4: per row and block of
    64) and pack them behind a bitmask. Zeros stay exactly zero; K must be a multiple of 64."""
    if bits not in VALUE_BITS:
        raise ConfigError(f"value bits must be 8 or 4, got {bits}")
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2 or weight.shape[1] % 64:
        raise ConfigError(f"a sparse FullyConnected needs a 2-D weight with K a multiple of 64, got {weight.shape}")
    n, k = weight.shape
    mask = weight != 0
    if bits == 8:
        scales = _half(np.abs(weight).max(axis=1) / 127)
        codes = np.clip(np.round(weight / scales[:, None]), -127, 127).astype(np.int8)
        values = codes[mask].view(np.uint8)  # row-major: every row's non-zeros, rows one after another
        offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=1))[:-1]])
    else:
        blocks = weight.reshape(n, k // 64, 64)
        scales = _half(np.abs(blocks).max(axis=2) / 7)
        codes = np.clip(np.round(blocks / scales[..., None]), -8, 7).astype(np.int8).reshape(n, k)
        values, offsets = _pack_nibbles(codes, mask)
    if values.size >= 2**31:
        raise ConfigError(f"a {weight.shape} weight packs to {values.size} bytes: more than 2 GiB per layer")
    return PackedWeight(mask=np.packbits(mask, axis=1, bitorder="little"),
                        values=np.concatenate([values, np.zeros(64, np.uint8)]),
                        offsets=np.ascontiguousarray(offsets, dtype=np.int32),
                        scales=np.ascontiguousarray(scales, dtype=np.float16), bits=bits)


def _half(scales: np.ndarray) -> np.ndarray:
    """Scales as the op stores them (f16, zero rows get 1), back in float32 to quantize with exactly those."""
    scales = np.where(scales == 0, 1.0, scales).astype(np.float16)
    return np.where(scales == 0, np.float16(2**-24), scales).astype(np.float32)  # a tiny scale must not vanish


def _pack_nibbles(codes: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero INT4 codes as nibbles (low first), each block of 64 weights starting on a byte; and the byte
    where each row starts."""
    n, k = codes.shape
    blocks = mask.reshape(-1, 64)
    counts = blocks.sum(axis=1)
    padded = counts + counts % 2
    block_start = np.concatenate([[0], np.cumsum(padded)[:-1]])  # in nibbles, always even
    position = block_start[:, None] + np.cumsum(blocks, axis=1) - 1
    nibbles = np.zeros(int(padded.sum()), np.uint8)
    nibbles[position[blocks]] = codes.reshape(-1, 64)[blocks].astype(np.uint8) & 0x0F
    return nibbles[0::2] | (nibbles[1::2] << 4), block_start.reshape(n, k // 64)[:, 0] // 2


def quantize_input(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [..., K] -> INT8 per group of 64 and the groups' scales, as the op quantizes each token."""
    groups = np.asarray(x, np.float32).reshape(*x.shape[:-1], -1, 64)
    scales = np.abs(groups).max(axis=-1) / np.float32(127)
    scales[scales == 0] = 1.0
    return np.round(groups / scales[..., None]).astype(np.int64), scales.astype(np.float64)


def reference(packed: PackedWeight, x: np.ndarray) -> np.ndarray:
    """What the op computes for x [..., K], in float64 (the input quantized per token, integer sums)."""
    q, sx = quantize_input(x)
    n, k = packed.shape
    codes = packed.codes().astype(np.int64).reshape(n, k // 64, 64)
    per_group = np.einsum("ngk,...gk->...ng", codes, q).astype(np.float64) * sx[..., None, :]
    weight_scales = packed.scales[:, None] if packed.bits == 8 else packed.scales
    return (per_group * weight_scales.astype(np.float64)).sum(axis=-1)
