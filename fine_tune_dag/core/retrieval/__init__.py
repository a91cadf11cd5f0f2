"""Retrieval over the author's passages: an index rebuilt incrementally as notes change (`index`), and the
messages that put what it finds in front of the model (`prompt`)."""
