import time

import ferryman


class SlowSetup(ferryman.API):
    def setup(self, device):
        time.sleep(60)

    def predict(self, x):
        return x
