"""Parameter-efficient tuners. One folder per method: `config.py` (validated dataclass) + `model.py`."""
