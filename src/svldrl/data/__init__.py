"""Data in: volume readers and writers, dataset layouts, normalisation, phantoms, splits."""
