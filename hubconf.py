"""torch.hub entry points: one per registered model, from a checkout of this repository.

    model = torch.hub.load('/path/to/effnet', 'efficientnet_b1_pruned', source='local', pretrained=True)

Keyword arguments go to `effnet.create_model` (num_classes, in_chans, drop_rate, features_only, ...).
"""

import os
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

import effnet as _effnet  # noqa: E402 - importable only once src/ is on the path

dependencies = ["torch", "numpy", "PIL", "safetensors"]


def _entry_point(name: str) -> Callable[..., Any]:
    def create(pretrained: bool = False, **kwargs: Any) -> Any:
        return _effnet.create_model(name, pretrained=pretrained, **kwargs)

    info = _effnet.get_config(name).info
    paper = f" ({info.paper})" if info is not None else ""
    create.__name__ = create.__qualname__ = name
    create.__doc__ = (f"{name}{paper}. pretrained=True loads the published ImageNet weights; other keyword "
                      "arguments go to effnet.create_model.")
    return create


# the models are data (effnet/variants.py), so the entry points are generated from the registry
globals().update({_name: _entry_point(_name) for _name in _effnet.list_models()})
