"""``tada.engine``: typed configs, the training loop, evaluation, optimisers/schedules, checkpoints."""
from .config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
