"""ferryman against bare uvicorn and LitServe, side by side: `python -m benchmarks [--quick]`."""
