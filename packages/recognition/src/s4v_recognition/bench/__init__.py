"""Benchmarks of the recognition models; not needed to train or evaluate one.

* :mod:`~s4v_recognition.bench.comparison`: the training memory and speed of Side4Video against
  its baselines and rivals (paper Table 2), ``s4v bench memory``.
* :mod:`~s4v_recognition.bench.reference_layout`: Side4Video computed as the reference
  implementation lays it out, the yardstick of that comparison.
* :mod:`~s4v_recognition.bench.memory_plan`: the training-memory estimate of a model too large to
  build here (``s4v bench memory --model side4video-e14``), measured on depth-reduced builds.
* :mod:`~s4v_recognition.bench.measure`: what they share (precisions, random batches, the bytes
  saved for backward).
"""
