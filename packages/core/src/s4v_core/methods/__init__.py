"""Rival methods of the Side4Video paper's memory table (arXiv 2311.15769, Table 2), one module each.

Each module defines a video encoder over an open_clip ViT: frames ``(B, T, 3, H, W)`` -> features
``(B, out_dim)``, built from an image tower and a small config. :mod:`s4v_recognition.encoders`
builds them from a recognition preset and :data:`s4v_recognition.presets.METHODS` registers them.
"""
