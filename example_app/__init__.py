"""A small, real use of fastapi_busproxy: an assistant served over the bus, and its caller.

- :mod:`example_app.assistant`: the worker that answers questions, with progress and a stream;
- :mod:`example_app.server`: the FastAPI app that hosts it behind ``include_bus_proxy`` with
  bearer-token authentication;
- :mod:`example_app.client`: a caller that connects with ``WebSocketProxyClient``, activates the
  assistant, asks questions and prints the answers as they stream;
- ``python -m example_app``: all of it in one process, on the embedded in-memory bus.
"""
