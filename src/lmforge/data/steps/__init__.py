"""lmforge's built-in pipeline steps; importing this package registers them all."""
