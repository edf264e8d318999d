"""Running recipes × tasks on one model and storing the results."""
