"""Export: ONNX, INT8 Q/DQ, TensorRT engines and the signed bundle (built in the Export issue)."""
