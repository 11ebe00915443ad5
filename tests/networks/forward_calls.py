"""Count the forward calls of modules: what a network ran and what it skipped."""

from __future__ import annotations

import torch


def modules_that_ran(modules, call) -> int:
    """How many forward calls of ``modules`` happened while ``call()`` ran (no gradients)."""
    ran = []
    hooks = [m.register_forward_hook(lambda *_: ran.append(1)) for m in modules]
    try:
        with torch.no_grad():
            call()
    finally:
        for h in hooks:
            h.remove()
    return len(ran)
