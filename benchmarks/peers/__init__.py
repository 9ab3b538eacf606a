"""One adapter per peer around benchmarks.models (ferryman, LitServe, BentoML, Ray Serve,
TorchServe, bare uvicorn + starlette), the GPU model's adapters, and launch.py to start them.
"""
