"""Keras model -> TFLite model bundle."""
