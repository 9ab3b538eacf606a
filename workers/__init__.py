"""The inference worker process: load the user's code, run its loop, answer API processes."""
