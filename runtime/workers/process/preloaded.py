"""The forkserver's last preload: once it imported the worker's modules, it freezes them (``gc.freeze``).

The garbage collector then never traverses those objects again, in the forkserver or in any worker forked
from it. A full collection in a worker takes ~0.1 ms instead of ~8 ms (pydantic's and procflow's ~34,000
objects are not walked), the pages holding them stay shared with the forkserver instead of being copied by
the collector's writes (a worker's unique memory ~6 MB instead of ~14 MB after its first steps), and the
forkserver's own exit does not collect them (the last pipe of a program closes ~40 ms sooner). What a
worker creates afterwards is collected as usual. Freezing is the use ``gc.freeze`` documents for a process
that forks; the preload leaves no garbage worth a collection first (5 objects, where ``gc.collect`` would
cost ~20 ms before the first worker can start).

Importing this module anywhere but in procflow's forkserver does nothing.
"""

from __future__ import annotations

import gc

from runtime.workers.process.forkserver import in_forkserver

if in_forkserver():
    gc.freeze()
