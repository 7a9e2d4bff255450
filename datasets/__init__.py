"""Dataset layer: manifest with provenance, validated import, leakage-safe splits."""
