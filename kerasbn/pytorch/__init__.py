"""PyTorch's files read without PyTorch: arcface_torch's trained backbones brought into
kerasbn's networks."""
