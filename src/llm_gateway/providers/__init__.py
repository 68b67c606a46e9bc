"""Upstream providers: each turns a GenerationRequest into a stream of our events."""

from __future__ import annotations

from .base import GenerationRequest, Provider, TokenCounter, error_from_upstream

__all__ = ["GenerationRequest", "Provider", "TokenCounter", "error_from_upstream"]
