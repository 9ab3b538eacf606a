"""ferryman against LitServe, BentoML, Ray Serve, TorchServe and bare uvicorn, side by side:
`python -m benchmarks [--quick | --gpu]`."""
