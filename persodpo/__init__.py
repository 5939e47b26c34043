"""persodpo: persona-grounded DPO pairs from many LLMs, scored automatically, trained on Ray.

Importing this package starts nothing (no Ray, no model): heavy imports live inside functions.
"""

__version__ = "0.1.0"
