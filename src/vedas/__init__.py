"""vedas: multimodal latent reasoning with Visual Enhanced Depth Scaling."""

__version__ = "0.1.0"
