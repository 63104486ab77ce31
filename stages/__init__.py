"""One thin module per DVC stage: parse params.yaml, call pipeline/, write outputs atomically."""
