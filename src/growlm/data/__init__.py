"""Text in: corpus documents and their sources, prepared token files, token windows and batches."""
