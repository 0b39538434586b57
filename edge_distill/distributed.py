"""Several processes under ``accelerate launch``: the main rank leads, the others join each distillation.

Planning, export, profiling and the report happen once, on the main rank. When the main rank starts
training a candidate it sends that candidate to the other ranks, which build the same student and join
the distillation (DDP; the teacher cache is computed sharded). ``None`` tells them the job is over.

Example:
    $ accelerate launch --multi_gpu --num_processes 2 -m edge_distill --profile raspberry-pi
"""

from __future__ import annotations

import os
from typing import Any

import torch


def launched() -> bool:
    """True inside a multi-process launch (``accelerate launch``/``torchrun`` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Coordinator:
    """The main rank's messages to the others; a no-op in a single process."""

    def __init__(self) -> None:
        self.state: Any = None
        if launched():
            from accelerate import PartialState

            # CPU ranks talk over gloo; Accelerate picks it when told the run is on the CPU
            self.state = PartialState(cpu=not torch.cuda.is_available())

    @property
    def is_main(self) -> bool:
        return self.state is None or self.state.is_main_process

    @property
    def world(self) -> int:
        return 1 if self.state is None else self.state.num_processes

    def send(self, message: Any) -> None:
        """Main rank: hand ``message`` (picklable) to every other rank."""
        if self.state is not None:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list([message], from_process=0)

    def receive(self) -> Any:
        """Other ranks: wait for the main rank's next message."""
        from accelerate.utils import broadcast_object_list

        box: list[Any] = [None]
        broadcast_object_list(box, from_process=0)
        return box[0]
