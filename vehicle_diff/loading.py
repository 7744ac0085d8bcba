"""Decode the images of the batches to come in DataLoader worker processes while the models run on this one.

The stages claim their batches one at a time (`Job.batches`), so the loader reads ahead in the order this process
will most likely claim them; a batch claimed out of that order (taken over from a dead worker, or skipped because
another process finished it) is decoded on the spot. The images are decoded by the same function either way, so
the results do not depend on the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch.utils.data


def default_num_workers(num_processes: int = 1) -> int:
    """Loader workers for each of `num_processes` processes on this machine: the cores each one has, less one for
    the process that runs the models, at most 8 (more do not pay for decoding PNGs)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cores // max(num_processes, 1) - 1))


class BatchFiles(torch.utils.data.Dataset):
    """Item `position`: (batch index, `load` of each item of the batch at that position of `order`)."""

    def __init__(self, order: list[int], items_of: Callable[[int], list], load: Callable):
        self.batches = [(index, items_of(index)) for index in order]
        self.load = load

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, position: int):
        index, items = self.batches[position]
        return index, [self.load(item) for item in items]


class PrefetchedBatches:
    """`decoded(index)`: `load` of each item (file, dataset row) of batch `index`, done ahead by `num_workers`
    worker processes (two batches each at most, so memory stays bounded)."""

    def __init__(self, order: list[int], items_of: Callable[[int], list], load: Callable, *, num_workers: int):
        self.items_of, self.load = items_of, load
        self.position = {index: position for position, index in enumerate(order)}
        self.next_position = 0
        loader = torch.utils.data.DataLoader(
            BatchFiles(order, items_of, load),
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            prefetch_factor=2 if num_workers else None,
        )
        self.iterator = iter(loader) if order else iter(())

    def __call__(self, index: int) -> list:
        position = self.position.get(index)
        if position is None or position < self.next_position:  # not ahead of us: decode it here
            return [self.load(item) for item in self.items_of(index)]
        while True:
            loaded_index, loaded = next(self.iterator)
            self.next_position += 1
            if loaded_index == index:
                return loaded

    def close(self) -> None:
        """Stop the worker processes (what they decoded ahead is dropped)."""
        self.iterator = iter(())
