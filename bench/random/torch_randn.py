#!/usr/bin/env python3
"""Times torch.randn for the element count of all Llama-3-8B r=32 A's (39,845,888 fp32) on the GPU.

(The issue quotes 29.4 M, which counts every A as 32 x 4096; down_proj's A is 32 x 14336, so the
real count, the one BM_gpu_generate_llama3_8b_r32 writes, is 32 layers x 32 x (6*4096 + 14336).)

The baseline for BM_gpu_generate_llama3_8b_r32 (lori_bench_random). CUDA events around each call,
median over --iters runs after --warmup runs. Prints milliseconds and GB/s of bytes written.
Usage: python3 bench/random/torch_randn.py [--iters 200] [--warmup 20]
"""
import argparse
import statistics

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    n = 32 * 32 * (6 * 4096 + 14336)  # 39,845,888: the elements BM_gpu_generate_llama3_8b_r32 writes
    out = torch.empty(n, device="cuda", dtype=torch.float32)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(2026)
    for _ in range(args.warmup):
        torch.randn(n, device="cuda", dtype=torch.float32, generator=gen, out=out)
    torch.cuda.synchronize()
    times = []
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(args.iters):
        start.record()
        torch.randn(n, device="cuda", dtype=torch.float32, generator=gen, out=out)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    ms = statistics.median(times)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: torch.randn({n}) fp32 median {ms:.4f} ms, "
          f"{n * 4 / (ms * 1e-3) / 1e9:.1f} GB/s written (min {min(times):.4f} ms, {args.iters} runs)")


if __name__ == "__main__":
    main()
