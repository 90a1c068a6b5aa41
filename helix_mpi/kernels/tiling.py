"""Tile sizes and layout rules shared by the kernel wrappers and the compiled kernels (jit/)."""
from __future__ import annotations

# Tokens per attention tile: scores of one tile for the G query heads of a KV head live in a
# [G, TILE] buffer (8 x 128 x 4 B = 4 KiB, L1-resident), so every K and V row is streamed once.
TILE = 128

# Parts of the sequence an attention tile gathers its tokens from (TILE // WAYS consecutive rows of
# each): every block of 8 K or V rows the micro-kernels read at once comes from 8 different pages,
# which the core's prefetchers stream concurrently (one sequential stream: ~0.7 of the read
# bandwidth, measured in docs/design.md section 6). The micro-kernels' 8-row blocks fix it at 8.
WAYS = 8

# P.V holds G x (32 to 64) columns of the output in registers, so it reads each V row once per
# group of columns (4 times at G = 8, D = 128). It walks a tile in chunks of PV_CHUNK tokens, every
# column group of one chunk before the next chunk: a chunk's V rows (32 x 512 B = 16 KiB in float32)
# come from memory once, during the first group, and stay in L1 for the others, so the reads are
# spread over the whole P.V work instead of all falling in its first quarter (a whole tile's V rows,
# 64 KiB, do not fit in L1). One multiple of the 8 ways; the accumulators are reloaded per chunk,
# which costs ~4% where it gains nothing, so whole tiles are kept (jit/attention.py `_pv_chunk`)
# where a tile's V rows fit in L1_V_BYTES (bf16 at D = 128: 32 KiB) or a group's K + V in
# STREAMED_KV_BYTES (~ one core's L2: read from cache, not memory). Measured: README Performance.
PV_CHUNK = 32
L1_V_BYTES = 32 << 10
STREAMED_KV_BYTES = 2 << 20

# Weight rows per block of the decode GEMM (jit/layers.py): out is loaded and stored once per block.
WEIGHT_ROWS_PER_BLOCK = 16


# Query heads per 16-lane vector in the heads-in-lanes score blocks (jit/simd.py): min(G, 4), so a
# K segment of 16/min(G, 4) floats, broadcast from memory, feeds G / min(G, 4) FMAs. The queries
# of a group are packed as qp [G*D/16, 16]: qp[c*NQ + r, h*seg + i] = q[r*GR + h, c*seg + i],
# GR = min(G, 4) heads per vector, NQ = G / GR vectors, seg = 16 / GR. Fixed at 4: the blocks' token
# counts (8 at G = 8, 4 at G = 16) keep NQ x tokens <= 16 accumulator registers for it.
HEADS_PER_VECTOR = 4


# bf16 K rows are scored with the heads in lanes only from this group size on: those blocks read K
# from an L1 buffer the rows are widened into first, which at G = 2 and 4 (one or two FMAs per
# widened value) costs more than dot products over rows widened in registers and their lane sums
# (one-process A/B at 64K tokens: x0.92 streamed, x0.73-0.82 in L2; at G >= 8 the reverse, x1.1).
MIN_LANES_GROUP_BF16 = 8


def heads_in_lanes(G, D, k_itemsize=4):
    """True where attention scores are vectorised across heads (the G heads of a group share the
    16 lanes of a vector: G divides 16), for K stored with k_itemsize bytes per element (4:
    float32, 2: bf16, MIN_LANES_GROUP_BF16)."""
    return G in (2, 4, 8, 16) and D % 16 == 0 and (k_itemsize == 4 or G >= MIN_LANES_GROUP_BF16)


def attention_work_floats(G, D):
    """float32 scratch of the attention kernel for groups of G query heads of size D: qs [G,D],
    s [G,TILE], acc [G,D], m [G], l [G], ebits [TILE], qp [D*G/16,16] (when heads_in_lanes for
    float32 K: enough for either storage), kbuf [8,D], each starting on a 64-byte boundary
    (jit/attention.py carves them in this order)."""
    sizes = (G * D, G * TILE, G * D, G, G, TILE, D * G if heads_in_lanes(G, D) else 0, 8 * D)
    return sum((n + 15) // 16 * 16 for n in sizes)
