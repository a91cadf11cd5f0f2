"""Note files in: parsing every kind the author keeps, and watching the notes folder for changes."""
