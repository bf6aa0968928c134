"""The worker side: one process running one plugin (`python -m worker PLUGIN_DIR`).

Plugin code imports only `worker.sdk`.
"""
