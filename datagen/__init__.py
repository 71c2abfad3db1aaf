"""Data generation: sources, decoding, matting, compositing, captions, the pipeline stages and their runners."""
