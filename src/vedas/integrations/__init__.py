"""Adapters that let evaluation harnesses drive vedas: ``lmms_eval`` (an lmms-eval model plugin).

VLMEvalKit has no plugin hook; it drives ``vedas serve`` through its OpenAI API wrapper
(docs/integrations.md).
"""
