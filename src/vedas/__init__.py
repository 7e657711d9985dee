"""vedas: multimodal latent reasoning with Visual Enhanced Depth Scaling.

import vedas
model, processor = vedas.tiny_model("qwen2_vl")          # offline, random weights
vm = vedas.VedasModel(model, processor)
texts, steps = vm.generate([image], ["How many red squares?"])
vm.save("ckpt"); vm = vedas.load("ckpt")
"""

from vedas.config import LatentConfig
from vedas.model import VedasModel, load
from vedas.tiny import tiny_model

__version__ = "0.1.0"
__all__ = ["LatentConfig", "VedasModel", "__version__", "load", "tiny_model"]
