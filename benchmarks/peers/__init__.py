"""One adapter per peer around benchmarks.models: ferryman, LitServe, bare uvicorn + starlette."""
