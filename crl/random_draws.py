"""torch's random streams, forked or replayed, so that work outside training leaves training's draws alone."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch as th


def forked_devices(device: th.device | str) -> dict[str, Any]:
    """The arguments of ``torch.random.fork_rng`` that fork the generator of ``device`` (a model's).

    ``fork_rng`` always forks the CPU generator; a policy on an accelerator (CUDA, MPS) samples its
    actions from that device's own generator, which must be forked as well. Only the model's device
    is named: forking every device (``fork_rng``'s default) initialises each one and warns.

    :param device: the model's device, e.g. ``model.device``
    :return: ``{"devices": []}`` for the CPU, else ``{"devices": [device], "device_type": device.type}``
    """
    device = th.device(device)
    if device.type == "cpu":
        return {"devices": []}
    return {"devices": [device], "device_type": device.type}


class RepeatableDraws:
    """torch's random state (the CPU's and ``device``'s generators) at the moment of construction.

    Inside :meth:`again` torch draws, from that moment on, the numbers it drew then (an actor samples
    the same noise), and the streams are left as they were before the block: training's later draws
    do not change.

    :param device: the device whose generator is kept besides the CPU's, e.g. ``model.device``
    """

    def __init__(self, device: th.device | str) -> None:
        self.device = th.device(device)
        self.cpu_state = th.get_rng_state()
        self.device_state = None
        if self.device.type != "cpu":
            self.device_state = th.get_device_module(self.device).get_rng_state(self.device)

    @contextlib.contextmanager
    def again(self) -> Iterator[None]:
        with th.random.fork_rng(**forked_devices(self.device)):
            th.set_rng_state(self.cpu_state)
            if self.device_state is not None:
                th.get_device_module(self.device).set_rng_state(self.device_state, self.device)
            yield
