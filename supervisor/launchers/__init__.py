"""Where a worker runs: the launcher seam and its two launchers.

    Launcher.launch(spec) -> LaunchedWorker      one worker process, started
        .connect(stdout, stderr, on_exit, on_usage) -> Pipe   its streams, its exit (and its usage, if remote)
        .send_signal(sig)                         to the worker and its process group
        .kill_tree(known)                         SIGKILL the worker and everything below it
        .cleanup(known)                           after the exit: kill what is left of its tree
        .close()                                  release the streams

The shape is jupyter_client's kernel provisioners (launch, poll, signal, kill,
cleanup). The handle (`supervisor.handle`) keeps every decision: deadlines,
cancellation, kill after grace, restarts. A launcher only starts a process
somewhere and carries its bytes, signals and exit.

- `LocalLauncher` (launchers/local.py): a child process of the supervisor.
- `RayLauncher` (launchers/ray.py, extra `neko-supervisor[ray]`): a Ray actor on
  a cluster node (launchers/relay.py) spawns the same worker there and relays its
  frames as bytes, over a connection of its own (launchers/channel.py).
"""

from supervisor.launchers.base import LaunchedWorker, Launcher, LaunchError, LaunchSpec, Pipe
from supervisor.launchers.local import LOCAL, LocalLauncher

__all__ = ["LOCAL", "LaunchError", "LaunchSpec", "LaunchedWorker", "Launcher", "LocalLauncher", "Pipe"]
