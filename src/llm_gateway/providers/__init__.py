"""Upstream providers: each turns a GenerationRequest into a stream of our events."""

from __future__ import annotations

from .base import GenerationRequest, Provider, error_from_upstream

__all__ = ["GenerationRequest", "Provider", "error_from_upstream"]
