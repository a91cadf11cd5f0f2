"""Privacy: what is scanned and redacted before anything leaves the machine, what is forgotten, and proof of it."""
