"""Benchmark and roofline plumbing (figures are never asserted: machines are shared and noisy)."""

from __future__ import annotations

from corelm.analysis.kernel_bench import BENCH_TYPES, bench_kernels, format_report


def test_bench_kernels_covers_every_type_and_path():
    report = bench_kernels([1], reps=1, gemv_shape=(64, 256), gemm_shape=(8, 64, 256))
    kinds = {(r["kind"], r["type"]) for r in report["results"]}
    for t in BENCH_TYPES:
        assert {("gemv", t.name), ("gemm", t.name), ("peak", t.name)} <= kinds
    assert report["read_bandwidth_gbs"][1] > 0
    text = format_report(report)
    assert "GEMV 64x256" in text and "Q4_0_X16" in text
