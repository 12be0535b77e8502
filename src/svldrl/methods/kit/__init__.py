"""The parts methods compose: target updates (:mod:`.targets`) and segmentation losses (:mod:`.losses`), one home
each. Methods import from here and never from one another (the import-linter ``independence`` contract in
pyproject.toml)."""
