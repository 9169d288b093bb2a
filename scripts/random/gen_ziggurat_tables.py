#!/usr/bin/env python3
"""Generates the frozen ziggurat tables of lori's gaussians: 256 layers (distribution::gaussian) or,
with --layers 2048, 2048 layers (distribution::gaussian_v2).

Run once per format; the output is checked in and frozen (it defines lori's Gaussian projections bit
for bit).
    python3 scripts/random/gen_ziggurat_tables.py > include/lori/detail/ziggurat_tables.hpp
    python3 scripts/random/gen_ziggurat_tables.py --layers 2048 > include/lori/detail/ziggurat2048_tables.hpp
A word w holds the layer in its low log2(N) bits, the sign in bit 31 and the uniform U in the bits
between (UB = 31 - log2(N) bits: 23 for 256 layers, 20 for 2048); m = 1 + U 2^-UB is the float with
bits 0x3f800000 | (U << (23 - UB)), and the fast threshold is stored as k = 0x3f800000 + (K << (23 - UB)).

Geometry (Marsaglia & Tsang 2000, with an exponential envelope over the tail so that EVERY rejection
restarts from scratch): f(x) = exp(-x^2/2) on x >= 0, N = 256 layers of equal area v.
  layer 0 (base): [0, r] x [0, f(r)]  plus the envelope {x > r, y < f(r) exp(-r (x - r))};
                  v = r f(r) + f(r)/r; "unrolled" width B = v / f(r).
  layer L >= 1:   [0, X_L] x [f(X_L), f(X_{L-1})], X_255 = r, X_0 = 0 (f(X_0) = 1), area v each:
                  f(X_{L-1}) = f(X_L) + v / X_L.
r solves the closure f(X_1) + v / X_1 = 1 (bisection in 60-digit arithmetic).
Every value is computed with mpmath at 60 significant digits and rounded ONCE to binary32 (to nearest,
ties to even) directly from the mpmath value (to_f32; going through a Python double would round twice).
The fast thresholds K_L and the wedge constants are derived from the ROUNDED widths, so the float
tables are self-consistent: bits(m) < k_L exactly when U23 * 2^-23 * W_L < W_{L-1} (layer 0: < r).
"""
import struct
import sys

import mpmath as mp

mp.mp.dps = 60
N = 256
if len(sys.argv) == 3 and sys.argv[1] == '--layers':
    N = int(sys.argv[2])
assert N in (256, 2048), 'layers: 256 or 2048'
LB = N.bit_length() - 1  # layer bits
UB = 31 - LB             # bits of U
TAG = '' if N == 256 else str(N)  # macro / guard infix


def f(x):
    return mp.exp(-x * x / 2)


def layers(r):
    v = r * f(r) + f(r) / r
    xs = [mp.mpf(0)] * N  # xs[L] = X_L, L = 1..127 ; xs[0] unused here
    xs[N - 1] = r
    for L in range(N - 1, 1, -1):
        t = f(xs[L]) + v / xs[L]
        if t >= 1:
            return v, xs, t  # r too small: the stack overflows the top
        xs[L - 1] = mp.sqrt(-2 * mp.log(t))
    return v, xs, f(xs[1]) + v / xs[1]


def solve_r():
    lo, hi = mp.mpf(3), mp.mpf(4 if N == 256 else 5)
    for _ in range(200):
        mid = (lo + hi) / 2
        _, _, top = layers(mid)
        # top > 1: layers too tall (r too small); top < 1: r too large
        if top > 1:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def to_f32(x):
    """x (mpf, positive, normal range) rounded once to the nearest binary32 (ties to even)."""
    x = mp.mpf(x)
    assert x > 0
    e = int(mp.floor(mp.log(x, 2)))
    # adjust e so that 2^e <= x < 2^(e+1)
    while mp.mpf(2) ** e > x:
        e -= 1
    while mp.mpf(2) ** (e + 1) <= x:
        e += 1
    assert -126 <= e <= 127
    scaled = x / mp.mpf(2) ** (e - 23)  # in [2^23, 2^24)
    n = int(mp.floor(scaled))
    frac = scaled - n
    if frac > mp.mpf(1) / 2 or (frac == mp.mpf(1) / 2 and (n & 1)):
        n += 1
    val = mp.mpf(n) * mp.mpf(2) ** (e - 23)
    b = struct.unpack('<I', struct.pack('<f', float(val)))[0]  # float(val) is exact (24-bit integer * 2^k)
    assert mp.mpf(struct.unpack('<f', struct.pack('<I', b))[0]) == val
    return b, val


def hexf(bits):
    return struct.unpack('<f', struct.pack('<I', bits))[0].hex() + 'f'


def main():
    r = solve_r()
    v, xs, top = layers(r)
    rb, rf = to_f32(r)
    inv_rb, _ = to_f32(1 / r)
    # float widths W[L] (multiplier of m - 1 where m = 1 + U23 * 2^-23)
    wbits, wvals = [0] * N, [None] * N
    wbits[0], wvals[0] = to_f32(v / f(r))
    for L in range(1, N):
        wbits[L], wvals[L] = to_f32(xs[L])
    # fast thresholds: U23 < K[L]  <=>  U23 * 2^-23 * W[L] < (left edge of the wedge)
    kk = [0] * N
    for L in range(N):
        edge = rf if L == 0 else (mp.mpf(0) if L == 1 else wvals[L - 1])
        kk[L] = int(mp.ceil(edge / wvals[L] * 2 ** UB))
        assert 0 <= kk[L] <= 2 ** UB
    # f(X_L) and f(X_{L-1}) - f(X_L) for the wedge test (from the float X values); F[0] = f(r)
    fb, db = [0] * N, [0] * N
    fb[0], _ = to_f32(f(rf))
    db[0] = 0
    for L in range(1, N):
        fb[L], _ = to_f32(f(wvals[L]))
        upper = mp.mpf(1) if L == 1 else f(wvals[L - 1])
        db[L], _ = to_f32(upper - f(wvals[L]))
    accept_fast = sum(mp.mpf(kk[L]) / 2 ** UB for L in range(N)) / N
    area_cover = N * v
    area_f = mp.sqrt(mp.pi / 2)
    out = sys.stdout
    fname = 'ziggurat%s_tables.hpp' % TAG
    guard = 'LORI_DETAIL_ZIGGURAT%s_TABLES_HPP' % TAG
    mac = 'LORI_ZIGGURAT%s' % TAG
    out.write('// lori/detail/%s - private: the frozen tables of lori\'s %d-layer Gaussian ziggurat.\n' % (fname, N))
    out.write('// GENERATED by scripts/random/gen_ziggurat_tables.py%s (mpmath, 60 digits, each value rounded once to\n' %
              ('' if N == 256 else ' --layers %d' % N))
    out.write('// binary32). Do not edit: these numbers define lori\'s Gaussian projections bit for bit.\n')
    out.write('//   r = %s (X_%d, start of the tail), v = %s (layer area)\n' % (mp.nstr(r, 20), N - 1, mp.nstr(v, 20)))
    out.write('//   fast-path acceptance %s, attempt acceptance (area under f / cover area) %s\n' %
              (mp.nstr(accept_fast, 10), mp.nstr(area_f / area_cover, 10)))
    if N == 256:
        out.write('// Per layer L: k = 0x3f800000 + K_L (fast iff bits(m) < k, m = 1 + U23 2^-23), w = width X_L\n')
    else:
        out.write('// Per layer L: k = 0x3f800000 + K_L (fast iff (0x3f800000 | U20) < k, i.e. U20 < K_L), w = width X_L\n')
    out.write('// (layer 0: v / f(r)), f = f(X_L) (layer 0: f(r)), d = f(X_{L-1}) - f(X_L) (layer 0: unused).\n')
    out.write('#ifndef %s\n#define %s\n\n' % (guard, guard))
    out.write('#include "lori/config.hpp"\n#include "lori/detail/internal_header_check.hpp"\n\n')
    out.write('#define %s_R %s\n' % (mac, hexf(rb)))
    out.write('#define %s_INV_R %s\n' % (mac, hexf(inv_rb)))
    out.write('// clang-format off\n#define %s_LAYERS { \\\n' % mac)
    for L in range(N):
        out.write('  {0x%08xu, %s, %s, %s}%s \\\n' % (0x3f800000 + (kk[L] if N == 2048 else kk[L] << (23 - UB)), hexf(wbits[L]), hexf(fb[L]), hexf(db[L]),
                                                   ',' if L < N - 1 else ''))
    out.write('}\n// clang-format on\n\n#endif  // %s\n' % guard)
    sys.stderr.write('r=%s v=%s top=%s fast=%s attempt=%s\n' % (mp.nstr(r, 15), mp.nstr(v, 15), mp.nstr(top, 15),
                                                                  mp.nstr(accept_fast, 8), mp.nstr(area_f / area_cover, 8)))


if __name__ == '__main__':
    main()
