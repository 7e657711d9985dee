"""Diagnostics: the paper's figures and the latent checks, one module per analysis (``vedas analyze``)."""
