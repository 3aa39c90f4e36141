"""backstory: reproducible forward, reversed and instruction-following TinyStories models."""

__version__ = "0.1.0"
