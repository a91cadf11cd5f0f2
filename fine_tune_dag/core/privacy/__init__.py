"""Personal data: what may leave the machine, and forgetting a note provably."""
