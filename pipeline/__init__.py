"""reficr: a reproducible ReFICR (RecSys 2024) — one retrievable LLM for conversational recommendation.

The library behind the DVC stages in ``stages/`` and the ``reficr`` CLI. It never reads
``params.yaml``: stages parse parameters and pass them in.
"""

__version__ = "0.1.0"
