"""The latent engine: it owns the types and the extension points, and never imports :mod:`vedas.method`
(docs/design.md#layers)."""
