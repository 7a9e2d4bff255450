"""The monthly retrain: reviewed labels in, a challenger trained and compared with the champion, a
gated export only on evidence (README.md)."""
