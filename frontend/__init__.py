"""The API process: uvicorn on the shared socket, routing each request to a worker of its model."""
