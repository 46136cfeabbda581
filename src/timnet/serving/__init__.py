"""Trained models out of the run store: loading, model folders, ONNX, the hub, predict, timelines."""
