"""The names of a bundle model's ONNX outputs: the contract between export and the device.

``logits`` (N x classes) always; a DefectNet adds ``defect_map`` (N x 1 x H/8 x W/8, defect
probability per cell of the model input) and, with its OK-patch memory filled, ``anomaly``
(N, the distance of the least familiar patch to the OK frames' patches).
"""

LOGITS = "logits"
DEFECT_MAP = "defect_map"
ANOMALY = "anomaly"
ORDER = (LOGITS, DEFECT_MAP, ANOMALY)  # the order in which a model lists the ones it has
