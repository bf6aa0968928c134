"""Fault: a plugin that takes more than its share. Each entry is bounded, so a
test without the protection it probes still ends (and proves the attempt works).

- `grow(mb, step_mb=4, pause=0)`: allocate and touch `mb` MiB in steps (`pause` seconds
  apart: a leak, not a spike), keep it; returns the MiB held.
- `bomb(mb)`: one allocation of `mb` MiB at once, pages touched.
- `hold(mb, seconds)`: keep `mb` MiB touched for `seconds` (many can run at once on
  the pool: a plugin well under its limit, with threads).
- `spin(seconds)`: burn CPU.
- `open_files(limit)`: open /dev/null until refused or `limit` reached; returns the count and the error.
- `fork(count, pause=0)`: fork `count` children that sleep, `pause` seconds apart; returns their pids.
- `escape()`: a grandchild that double-forks, calls setsid and clears its
  environment (no tag left to find it by); returns its pid.
- `children()`: pids of the worker's live descendants.
- `threads(count)`: start `count` idle threads (a plugin with many threads, little memory).
- `spin_in_grandchildren(seconds, each=0.2)`: a middle child runs CPU-burning
  grandchildren one after another and reaps them, for `seconds` in all (CPU time
  that only shows in the middle process's children's time).
- `release()`: drop what `grow` kept.
- `block_shutdown()`: from now on the shutdown hook never returns, so a stop
  must escalate to SIGTERM (which ends the worker with no cleanup of its own).
"""

import os
import sys
import threading
import time

from worker.sdk import NekoPluginBase, lifecycle, plugin_entry

MB = 1024 * 1024


def _touched(mb):
    block = bytearray(mb * MB)
    for offset in range(0, len(block), 4096):  # make every page resident
        block[offset] = 1
    return block


class HogPlugin(NekoPluginBase):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.kept = []
        self.procs = []
        self.shutdown_blocked = False

    @lifecycle(id="shutdown")
    def on_shutdown(self):
        if self.shutdown_blocked:
            threading.Event().wait()

    @plugin_entry(id="block_shutdown")
    def block_shutdown(self, **_):
        self.shutdown_blocked = True
        return True

    @plugin_entry(id="ping")
    def ping(self, **_):
        return "pong"

    @plugin_entry(id="grow")
    def grow(self, mb: int, step_mb: int = 4, pause: float = 0, **_):
        for _ in range(mb // step_mb):
            self.kept.append(_touched(step_mb))
            time.sleep(pause)
        return len(self.kept) * step_mb

    @plugin_entry(id="bomb")
    def bomb(self, mb: int, **_):
        return len(_touched(mb)) // MB

    @plugin_entry(id="hold")
    def hold(self, mb: int, seconds: float, **_):
        block = _touched(mb)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return len(block) // MB

    @plugin_entry(id="release")
    def release(self, **_):
        self.kept.clear()
        return True

    @plugin_entry(id="spin")
    def spin(self, seconds: float, **_):
        deadline = time.process_time() + seconds
        n = 0
        while time.process_time() < deadline:
            n += 1
        return n

    @plugin_entry(id="threads")
    def threads(self, count: int, **_):
        self.idle = threading.Event()
        for _ in range(count):
            threading.Thread(target=self.idle.wait, daemon=True).start()
        return threading.active_count()

    @plugin_entry(id="spin_in_grandchildren")
    def spin_in_grandchildren(self, seconds: float, each: float = 0.2, **_):
        middle = os.fork()
        if middle == 0:
            for _ in range(int(seconds / each)):
                grandchild = os.fork()
                if grandchild == 0:
                    deadline = time.process_time() + each
                    while time.process_time() < deadline:
                        pass
                    os._exit(0)
                os.waitpid(grandchild, 0)
            os._exit(0)
        os.waitpid(middle, 0)
        return seconds

    @plugin_entry(id="open_files")
    def open_files(self, limit: int, **_):
        fds = []
        error = None
        try:
            while len(fds) < limit:
                fds.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            error = exc.strerror
        finally:
            for fd in fds:
                os.close(fd)
        return {"opened": len(fds), "error": error}

    @plugin_entry(id="fork")
    def fork(self, count: int, pause: float = 0, **_):
        for _ in range(count):
            pid = os.fork()
            if pid == 0:  # child: sleep, never return into the worker's code
                time.sleep(600)
                os._exit(0)
            self.procs.append(pid)
            time.sleep(pause)
        return list(self.procs)

    @plugin_entry(id="escape")
    def escape(self, **_):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: new session, fork again, leave
            os.close(read_end)
            os.setsid()
            if os.fork() == 0:
                os.write(write_end, str(os.getpid()).encode())
                os.close(write_end)
                # No environment: no tag to find it by. The interpreter, not /bin/sleep:
                # a sandboxed plugin may execute only what Python needs.
                os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)"], {})
            os._exit(0)
        os.close(write_end)
        os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as pipe:
            return int(pipe.read())

    @plugin_entry(id="children")
    def children(self, **_):
        import psutil

        return sorted(p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE)
