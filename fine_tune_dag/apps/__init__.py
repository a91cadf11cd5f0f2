"""The web pages the product serves, each with its own files: the model server and its playground, and the
annotation pages."""
