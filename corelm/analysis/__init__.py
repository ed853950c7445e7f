"""Measurement: kernel and model benchmarks, machine limits, roofline."""
