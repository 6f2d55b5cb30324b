"""cuda-convnet layer files run as they are: parser, builder and the ``CfgNet`` model.

>>> from localconv.configs import load_cfg_model
>>> model = load_cfg_model("layers.cfg", "layer-params.cfg", crop=24)  # doctest: +SKIP

See ``docs/cfg.md`` for the supported layer types, keys and the error format.
"""
from .builder import build_cfg_model, build_cfg_model_from_spec, load_cfg_model
from .net import CfgNet
from .parser import CfgFile, CfgItem, CfgSection, parse_cfg

__all__ = ["CfgFile", "CfgItem", "CfgNet", "CfgSection", "build_cfg_model", "build_cfg_model_from_spec",
           "load_cfg_model", "parse_cfg"]
