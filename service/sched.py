"""How the kernel schedules the event loop against the engine where they share a core.

Under an open-loop load each request arrives on its own: every arrival wakes the event loop, and
a normal (``SCHED_OTHER``) thread that wakes preempts the engine process running on its core.
The engine then loses its core (and its cache) every millisecond or two, and the loop runs one
request per wake-up, paying the switch and its own overhead each time. Two runs of
``skipvit bench overload --server-cpus 0 --loadgen-cpus 1`` (server and engine on one core), one
after the other on the 2-core CPU machine: with ``SKIPVIT_LOOP_SCHED=normal``, capacity 595
images/s and 499 images/s of goodput at 3x; with ``batch``, 640 and 601 (docs/serving.md says how
much such runs vary).

``SCHED_BATCH`` changes one thing: a thread that wakes does not preempt the one running. The loop
still gets its fair share of the core, and runs when the engine's slice ends (a few
milliseconds), with every request that arrived meanwhile in one pass. Any thread may choose it;
no privilege is needed. Threads the loop thread starts inherit it (the decode threads, the
engine's reader threads); so would the engine processes it starts, which is why an engine
process sets itself back to ``SCHED_OTHER`` (``normal``) when it starts.

Linux only: elsewhere both calls do nothing and say so.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("skipvit.service")


def _set(policy_name: str) -> bool:
    policy = getattr(os, policy_name, None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # 0: the calling thread
    except OSError as e:
        log.warning("could not set %s on this thread: %s", policy_name, e)
        return False
    return True


def batch() -> bool:
    """Put the calling thread (the event loop's) in ``SCHED_BATCH``; False where that is not
    possible (not Linux, or refused)."""
    return _set("SCHED_BATCH")


def normal() -> bool:
    """Put the calling thread back in ``SCHED_OTHER`` (an engine process, at its start)."""
    return _set("SCHED_OTHER")
