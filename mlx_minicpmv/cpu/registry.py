"""Which portable layer each CPU layer replaces: ``@replaces(Layer)`` registers, ``swap_layers`` applies.

A CPU layer is a subclass of the portable layer that adds behaviour, not state, so a swap
changes the class of the layer in place: it keeps its parameters, attributes and place in the
module tree, and weights, quantisation, LoRA and the parameter count see the same model.
"""

from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

import mlx.nn as nn

_SWAPS: List[Tuple[type, type, Optional[Callable[[nn.Module], bool]]]] = []


def replaces(portable: type, when: Optional[Callable[[nn.Module], bool]] = None):
    """Class decorator: layers of exactly the class ``portable`` become the decorated class
    when ``when(layer)`` holds (or always); the first registration that matches wins."""

    def register(cpu_class: type) -> type:
        if not issubclass(cpu_class, portable):
            raise TypeError(f"{cpu_class.__name__} must subclass {portable.__name__} to replace it")
        _SWAPS.append((portable, cpu_class, when))
        return cpu_class

    return register


def swap_layers(model: nn.Module) -> Dict[str, int]:
    """Change every registered layer of ``model`` to its CPU class; how many of each."""
    counts: Counter = Counter()
    for _, layer in model.named_modules():
        for portable, cpu_class, when in _SWAPS:
            if type(layer) is portable and (when is None or when(layer)):
                layer.__class__ = cpu_class
                counts[cpu_class.__name__] += 1
                break
    return dict(counts)
