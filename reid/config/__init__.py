from reid.config.config import (get_cfg, load_config, merge_overrides, read_yaml, save_config,
                                validate)
from reid.config.node import CfgNode

__all__ = ["CfgNode", "get_cfg", "load_config", "merge_overrides", "read_yaml", "save_config",
           "validate"]
