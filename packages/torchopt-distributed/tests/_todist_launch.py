"""Launch small RPC worlds of real processes on 127.0.0.1, each with a hard deadline."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = ['WORLDS', 'RankResult', 'free_port', 'launch']

WORLDS = Path(__file__).parent / 'worlds'


class RankResult(NamedTuple):
    """Outcome of one rank: exit code (None if killed at the deadline), output, elapsed time."""

    rank: int
    returncode: int | None
    stdout: str
    stderr: str
    elapsed: float


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def launch(
    script: str,
    world_size: int,
    *,
    ranks: Sequence[int] | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> list[RankResult]:
    """Run ``worlds/<script>`` as ranks ``ranks`` (default all) of a world of ``world_size``.

    Every process gets torchrun's variables, loopback-only sockets and a fresh port. All of them
    are killed (whole process group) at ``timeout`` seconds; a killed rank has returncode None.
    """
    port = free_port()
    ranks = list(range(world_size)) if ranks is None else list(ranks)
    procs = []
    start = time.monotonic()
    for rank in ranks:
        proc_env = dict(os.environ)
        proc_env.update(
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR='127.0.0.1',
            MASTER_PORT=str(port),
            TP_SOCKET_IFNAME='lo',
            GLOO_SOCKET_IFNAME='lo',
            OMP_NUM_THREADS='1',
            PYTHONUNBUFFERED='1',
        )
        proc_env.pop('TORCHELASTIC_USE_AGENT_STORE', None)
        proc_env.update(env or {})
        procs.append(
            subprocess.Popen(  # noqa: S603
                [sys.executable, str(WORLDS / script), *args],
                env=proc_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    results = []
    deadline = start + timeout
    try:
        for rank, proc in zip(ranks, procs):
            try:
                out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
                code: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                _kill(proc)
                out, err = proc.communicate()
                code = None
            results.append(RankResult(rank, code, out, err, time.monotonic() - start))
    finally:
        for proc in procs:
            if proc.poll() is None:
                _kill(proc)
                proc.communicate()
    return results


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
