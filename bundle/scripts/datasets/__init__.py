"""Data set readers and generators that produce the project's datalist."""
