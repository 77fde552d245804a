"""STAND-IN for ``torch_tensorrt.dynamo.conversion`` (tests only; NOT TensorRT)."""
