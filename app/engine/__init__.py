"""The engine package. Only app/engine/llama.py imports llama_cpp, and only when a model loads."""
from app.engine.engine import Engine
from app.engine.types import Completion, GenerationRequest, GenerationResult, StreamPiece, TokenLogprob

__all__ = ["Engine", "Completion", "GenerationRequest", "GenerationResult", "StreamPiece", "TokenLogprob"]
