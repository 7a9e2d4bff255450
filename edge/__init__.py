"""Edge runtime. Owns the contracts every stage honours; never imports torch."""
