"""Training code: tiny model builders for tests and defaults, and the trainers that make them competent."""
