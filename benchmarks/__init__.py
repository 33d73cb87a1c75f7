"""Benchmarks against PyTorch: outside research/, so that the library never imports torch."""
