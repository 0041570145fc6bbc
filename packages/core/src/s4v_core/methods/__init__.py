"""Rival methods of the Side4Video paper's memory table (spec 5.1), one module each.

Each module builds a video encoder over an open_clip ViT: frames ``(B, T, 3, H, W)`` -> features
``(B, out_dim)``; :data:`s4v_recognition.presets.METHODS` registers them for the recognition task.
"""
