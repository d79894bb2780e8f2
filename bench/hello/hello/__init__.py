"""make bench's baseline app."""
