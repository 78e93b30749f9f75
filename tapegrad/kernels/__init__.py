"""Kernels: numeric code only (never imports Tensor). CPU and CUDA twins side by side."""
