"""torch.distributed set-up from the environment ``torchrun`` provides (NCCL on GPU, gloo on CPU).

Every collective the engine makes goes through :func:`collective`, which turns a peer that died or
stopped answering (``train.dist_timeout`` seconds, passed to ``init_process_group``) into a
:class:`DistributedError` that names this rank, what it was doing, the ranks whose heartbeat (a counter each
rank's thread bumps in the rendezvous store) stopped, and what to do, instead of a hang or a
backend traceback. :func:`any_rank` is the collective stop flag: one rank's signal stops all.
"""
from __future__ import annotations

import datetime
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "DistributedError", "init_distributed", "is_distributed", "barrier", "cleanup",
           "all_reduce_mean", "all_reduce_sum", "any_rank", "collective"]


class DistributedError(RuntimeError):
    """Another process of the run died or stopped answering; the run cannot go on."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_TIMEOUT = [1800.0]


class _Heartbeat:
    """Liveness of every rank, for naming the ones that stop answering: a daemon thread of each rank
    bumps a counter in the rendezvous store (a client of the ``TCPStore`` at ``MASTER_ADDR:MASTER_PORT``
    that torchrun or rank 0 hosts) every ``period`` seconds, also while its main thread waits in a
    collective. A frozen (SIGSTOP) or dead rank's counter stops moving."""

    def __init__(self, rank: int, world: int, period: float = 0.5):
        self.rank, self.world, self.period = rank, world, period
        self._stop = threading.Event()
        try:
            self.reader = self._client()
            writer = self._client()
        except (KeyError, ValueError, RuntimeError):  # another rendezvous (e.g. file://): no names then
            self.reader = None
            return
        threading.Thread(target=self._beat, args=(writer,), daemon=True, name="tada-heartbeat").start()

    @staticmethod
    def _client():
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=datetime.timedelta(seconds=10), wait_for_workers=False)

    def _beat(self, store) -> None:
        n = 0
        while not self._stop.wait(self.period):
            n += 1
            try:
                store.set(f"tada/heartbeat/{self.rank}", str(n))
            except RuntimeError:  # the store is gone (rank 0 or the launcher died): nothing left to say
                return

    def _counters(self):
        keys = [f"tada/heartbeat/{r}" for r in range(self.world)]
        return [int(self.reader.get(k)) if self.reader.check([k]) else -1 for k in keys]

    def lost_ranks(self) -> str:
        """``"; rank 1 stopped answering (its heartbeat stopped)"``, or why the ranks cannot be told."""
        if self.reader is None:
            return ""
        try:
            self.reader.set_timeout(datetime.timedelta(seconds=5))
            before = self._counters()
            time.sleep(4 * self.period)
            after = self._counters()
        except RuntimeError:
            return "; the rendezvous store is unreachable too, so rank 0's host (or the launcher) is down"
        lost = [r for r in range(self.world) if r != self.rank and after[r] == before[r]]
        if not lost:
            return "; every rank's heartbeat is alive, so one is stuck (a deadlock or a hung data loader)"
        return "; " + ", ".join(f"rank {r}" for r in lost) + " stopped answering (heartbeat stopped)"

    def close(self) -> None:
        self._stop.set()


_HEARTBEAT: list = [None]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: str = "auto", timeout: float = 1800.0) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), else run alone.

    ``device``: ``"auto"`` (the local GPU when there is one, else the CPU), ``"cpu"`` or ``"cuda"``.
    ``timeout``: seconds any collective waits for the other ranks before it fails (``train.dist_timeout``).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is available; use train.device=cpu")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not is_distributed():
        _TIMEOUT[0] = float(timeout)
        with collective("joining the process group (init_process_group)"):
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout))
        _HEARTBEAT[0] = _Heartbeat(rank, world)
    return DistInfo(rank, world, local, dev)


@contextmanager
def collective(what: str):
    """Run a collective (or code that makes some, e.g. a DDP backward); a dead or frozen peer becomes a
    :class:`DistributedError` naming this rank and ``what`` it was doing."""
    try:
        yield
    except DistributedError:
        raise
    except (dist.DistError, RuntimeError) as e:
        if not _is_peer_failure(e):
            raise
        rank = os.environ.get("RANK", "?")
        world = os.environ.get("WORLD_SIZE", "?")
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        lost = _HEARTBEAT[0].lost_ranks() if _HEARTBEAT[0] is not None else ""
        raise DistributedError(
            f"rank {rank} of {world}: {what} failed because another rank died or did not answer within "
            f"train.dist_timeout={_TIMEOUT[0]:g} s ({first}){lost}. This rank stops too; see the other ranks' "
            "logs for the first error, then run the same command again to resume from the last checkpoint"
        ) from e


_PEER_WORDS = ("timed out", "timeout", "connection", "closed", "reset by peer", "broken pipe", "gloo", "nccl",
               "socket", "store", "peer")


def _is_peer_failure(e: BaseException) -> bool:
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return is_distributed() and any(w in text for w in _PEER_WORDS)


def barrier(what: str = "a barrier") -> None:
    if is_distributed():
        with collective(what):
            dist.barrier()


def _all_reduce(t: torch.Tensor, op, what: str) -> torch.Tensor:
    if is_distributed():
        t = t.clone()
        with collective(what):
            dist.all_reduce(t, op=op)
    return t


def all_reduce_mean(t: torch.Tensor, what: str = "averaging a value over ranks") -> torch.Tensor:
    if is_distributed():
        t = _all_reduce(t, dist.ReduceOp.SUM, what) / dist.get_world_size()
    return t


def all_reduce_sum(t: torch.Tensor, what: str = "summing a value over ranks") -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.SUM, what)


def any_rank(flag: bool, device: torch.device = torch.device("cpu"), what: str = "agreeing on whether to stop") -> bool:
    """True on every rank when ``flag`` is true on at least one (one collective; alone: ``flag``)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(_all_reduce(t, dist.ReduceOp.MAX, what).item() > 0)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
    if _HEARTBEAT[0] is not None:
        _HEARTBEAT[0].close()
    _HEARTBEAT[0] = None
