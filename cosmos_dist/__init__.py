"""cosmos-dist: Cosmos-Predict1 diffusion world models across many GPUs."""
__version__ = "0.1.0"
