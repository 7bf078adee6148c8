"""edge-convert: Keras -> quantized TFLite with a manifest and a quality gate (host side)."""
