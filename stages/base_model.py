"""DVC stage `base_model`: the profile's base LM as a local safetensors folder (models/base).

    python -m stages.base_model
"""

from __future__ import annotations

from pipeline.model.base_model import convert_base_model
from stages.common import ROOT, load_params, setup_logging, user_errors


def main() -> None:
    setup_logging()
    params = load_params("base_model")
    convert_base_model(params["model"]["preset"], ROOT / "models/base", params["model"].get("path") or "")


if __name__ == "__main__":
    with user_errors():
        main()
