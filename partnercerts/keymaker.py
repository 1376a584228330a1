"""Keys and CSRs for a rotation run, made ahead in worker processes (one per usable core), in plan order."""
from __future__ import annotations

import os
import signal
from typing import Any


def new_key_and_csr(key_spec: str, subject) -> tuple[str, str, str]:
    """A new private key and its CSR for `subject`, as PEM, and the public key's SHA-256."""
    from . import csr as csrmod
    from . import keys
    key = keys.generate(key_spec)
    return keys.to_pem(key), csrmod.to_pem(csrmod.build(subject, key)), keys.spki_sha256(key.public_key())


def _worker_init() -> None:
    # Ctrl-C is the parent's to handle: a worker stops when the parent's pool shuts down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class KeyMaker:
    """Makes the keys and CSRs a rotation run needs ahead of time, in worker processes, in plan order.

    An RSA key costs tens of milliseconds of one core (RSA-2048) and is most of the work of a due
    credential; its Vault writes mostly wait on the network. So a run with several due credentials
    hands key generation to a process pool with one worker per usable core, and the main process
    writes one credential to Vault while the workers make the next keys. At most `ahead` keys are
    made in advance, so an interrupted run discards few. A key made ahead is written with the same
    check-and-set as before, against the version read just before the write: a credential that
    turns out to have a pending key already (from another run) keeps it and the fresh key is
    dropped, never a second pending key. Keys travel from the workers over a pipe, in memory,
    never through a file. With one due credential, or when the pool fails, keys are made in this
    process as before.
    """

    def __init__(self, wanted: list[tuple]):  # (mzp, app, key_spec, subject), in plan order
        self.wanted = wanted
        self.position = {(w[0], w[1]): i for i, w in enumerate(wanted)}
        self.submitted = 0
        self.futures: dict[int, Any] = {}
        self.pool: Any = None
        self.workers = min(usable_cores(), 8)
        self.ahead = 2 * self.workers
        self.broken = len(wanted) < 2

    def take(self, mzp: str, app: str, key_spec: str, subject) -> tuple[str, str, str]:
        i = self.position.get((mzp, app))
        if self.broken or i is None or self.wanted[i][2:] != (key_spec, subject):
            return new_key_and_csr(key_spec, subject)
        try:
            if self.pool is None:
                import concurrent.futures
                import multiprocessing

                from . import csr, keys  # noqa: F401 - imported once here, not by each forked worker
                ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                  else None)
                self.pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=ctx,
                                                                   initializer=_worker_init)
            while self.submitted < len(self.wanted) and self.submitted <= i + self.ahead:
                w = self.wanted[self.submitted]
                self.futures[self.submitted] = self.pool.submit(new_key_and_csr, w[2], w[3])
                self.submitted += 1
            for j in [j for j in self.futures if j < i]:  # planned credentials that needed no key after all
                self.futures.pop(j).cancel()
            made = self.futures.pop(i).result()
        except Exception:  # a broken pool (a worker killed, no /dev/shm): carry on in this process
            self.close()
            self.broken = True
            return new_key_and_csr(key_spec, subject)
        if i == len(self.wanted) - 1:
            self.close()
        return made

    def close(self) -> None:
        if self.pool is not None:
            for f in self.futures.values():
                f.cancel()
            self.futures.clear()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
