"""The product's experiment commands: ``vedas demo`` (:mod:`.demo`), its ablation (:mod:`.ablation`) and
``vedas bench`` (:mod:`.bench`, :mod:`.bench_width`), with what they share: the sizes and recipes
(:mod:`.sizes`), the timing helpers (:mod:`.timing`), trainings side by side (:mod:`.jobs`) and
SmolLM2-135M in a Qwen2-VL shell (:mod:`.smollm`). The top layer: nothing in vedas imports it."""
