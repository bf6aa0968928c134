"""Worker exit codes: the part of the protocol that travels through `waitpid`, not frames.

A worker that cannot write a frame any more (out of memory, the parent gone)
still tells the supervisor why it ended through its exit status.
"""

EXIT_OK = 0
EXIT_START_FAILED = 3     # the plugin could not load; a `fatal` frame says why
EXIT_OUT_OF_MEMORY = 4    # a MemoryError anywhere in the worker: its state can no longer be trusted
EXIT_NO_RESOURCES = 5     # no thread could be started (memory backstop or a process limit)
EXIT_PROTOCOL_ERROR = 6   # what the supervisor sent could not be decoded
EXIT_PARENT_GONE = 70     # started after the supervisor had already died
