"""Review: collector, inspectors web app, labels back into the dataset (Review issue)."""
