"""tinyreason: teach ~1.5B language models to reason, reproducibly (DVC + TRL + PEFT)."""

__version__ = "0.1.0"
