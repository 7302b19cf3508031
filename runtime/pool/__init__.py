"""The worker pool: starting, watching, killing, replacing and placing work on workers."""

from runtime.pool.budget import RestartBudget
from runtime.pool.link import Launcher, WorkerLink
from runtime.pool.pool import Pool
from runtime.pool.worker import Worker, WorkerState

__all__ = ["Launcher", "Pool", "RestartBudget", "Worker", "WorkerLink", "WorkerState"]
