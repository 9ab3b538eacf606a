import os
import time

import ferryman


class SlowSetup(ferryman.API):
    """setup() takes SETUP_SLEEP seconds (default 60): a model that loads slowly."""

    def setup(self, device):
        time.sleep(float(os.environ.get("SETUP_SLEEP", "60")))

    def predict(self, x):
        return x
