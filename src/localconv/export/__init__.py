"""Trained runs as deployable files: ``localconv export`` and ``localconv predict MODEL.onnx``.

:mod:`.exporter` (needs torch) writes a run's whole classifier, its test-time preprocessing inside the
graph, as an ONNX file or a ``torch.export`` program, with a side-car JSON (:mod:`.metadata`) that states the
input layout, crop, normalization, classes and outputs; :mod:`.onnx_runtime` runs such an ONNX file with
onnxruntime and numpy alone, so a deployment needs no torch. This package imports nothing heavy itself.
"""
