"""Kernels and their autograd wrappers; the public API in :mod:`softmargin.torch` stays thin."""
