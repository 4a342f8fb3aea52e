"""Local tweaks to Meta's reference Llama code (llama_models.llama3.model) for our fine-tunes."""

from .ffn import GeGLUFeedForward, ffn_hidden_dim

__all__ = ["GeGLUFeedForward", "ffn_hidden_dim"]
