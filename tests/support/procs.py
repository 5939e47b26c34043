"""Finding Ray worker processes by their process title (``ray::RayTrainWorker``, ``ray::MapWorker``
...), to kill one in fault-injection tests."""

from __future__ import annotations

import psutil


def descendants_titled(root_pids: list[int], title: str) -> list[psutil.Process]:
    """Descendants of ``root_pids`` whose process title starts with ``title``. A process that exits
    between the listing and the look is skipped, not an error (workers come and go)."""
    found = []
    for pid in root_pids:
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for child in children:
            try:
                cmd = child.cmdline()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            if cmd and cmd[0].startswith(title):
                found.append(child)
    return found
