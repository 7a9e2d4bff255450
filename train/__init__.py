"""Training: timm defect classifiers (built in the Training issue)."""
