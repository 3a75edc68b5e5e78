"""Preprocessing steps: each is a plain function, arrays in, arrays out.

Modules (imported on demand, never eagerly, so ``import merkit.preprocess`` stays cheap):
``flow`` (optical flow, optical strain, flow views), ``magnify`` (Eulerian video
magnification), ``spotting`` (apex spotting and the apex policy), ``sampling`` (temporal
sampling, frame-rate resampling, interpolation, spatio-temporal-slice key frames), ``face``,
``au``, ``depth``, and ``pipeline`` (building a model's views from a Sample).
"""
