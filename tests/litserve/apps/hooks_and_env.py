# Written for ferryman's fixtures (not copied from LitServe), in the style of LitServe's tests/e2e
# apps: it prints, for every Callback hook, every Logger.process call and the LitAPI methods, the
# process it runs in and the LITSERVE_WORKER_ID it sees, so that expected.json records where each
# one runs under LitServe.
import multiprocessing as mp
import os

import litserve as ls


def where(what):
    name = mp.current_process().name
    worker_id = os.environ.get("LITSERVE_WORKER_ID")
    print(f"FIXTURE {what} process={name} LITSERVE_WORKER_ID={worker_id}", flush=True)


class HookPrinter(ls.Callback):
    def on_before_setup(self, *args, **kwargs):
        where("on_before_setup")

    def on_after_setup(self, *args, **kwargs):
        where("on_after_setup")

    def on_before_decode_request(self, *args, **kwargs):
        where("on_before_decode_request")

    def on_after_decode_request(self, *args, **kwargs):
        where("on_after_decode_request")

    def on_before_encode_response(self, *args, **kwargs):
        where("on_before_encode_response")

    def on_after_encode_response(self, *args, **kwargs):
        where("on_after_encode_response")

    def on_before_predict(self, *args, **kwargs):
        where("on_before_predict")

    def on_after_predict(self, *args, **kwargs):
        where("on_after_predict")

    def on_server_start(self, *args, **kwargs):
        where("on_server_start")

    def on_server_end(self, *args, **kwargs):
        where("on_server_end")

    def on_request(self, *args, **kwargs):
        where(f"on_request active_requests={kwargs.get('active_requests')}")

    def on_response(self, *args, **kwargs):
        where("on_response")


class PrintLogger(ls.Logger):
    def process(self, key, value):
        where(f"Logger.process key={key} value={value}")


class HookedAPI(ls.LitAPI):
    def setup(self, device):
        where(f"setup device={device}")
        self.model = lambda x: x**2

    def decode_request(self, request):
        where(f"decode_request type={type(request).__name__}")
        return request["input"]

    def predict(self, x):
        where(f"predict device={self.device}")
        self.log("squared", x**2)
        return self.model(x)

    def encode_response(self, output):
        where("encode_response")
        return {"output": output}

    def health(self):
        where("health")
        return True


if __name__ == "__main__":
    server = ls.LitServer(
        HookedAPI(), callbacks=[HookPrinter()], loggers=[PrintLogger()], track_requests=True
    )
    server.run(port=8000)
