"""The 'vllm' logger, configured once from VLLM_LOGGING_LEVEL."""

import logging

from vllm import envs

_root = logging.getLogger("vllm")
if not _root.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(
        logging.Formatter("%(levelname)s %(asctime)s %(name)s] %(message)s", "%H:%M:%S")
    )
    _root.addHandler(_handler)
    _root.setLevel(envs.VLLM_LOGGING_LEVEL.upper())
    _root.propagate = False


def init_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
