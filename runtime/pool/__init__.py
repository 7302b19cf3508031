"""The worker pool: starting, watching, killing, replacing, sizing and placing work on workers."""

from runtime.pool.budget import RestartBudget
from runtime.pool.link import Launcher, WorkerLink
from runtime.pool.pool import Pool, PoolState
from runtime.pool.stats import PoolStats
from runtime.pool.worker import Worker, WorkerState

__all__ = ["Launcher", "Pool", "PoolState", "PoolStats", "RestartBudget", "Worker", "WorkerLink",
           "WorkerState"]
