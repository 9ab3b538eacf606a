import this_module_does_not_exist  # noqa: F401

import ferryman


class Broken(ferryman.API):
    def predict(self, x):
        return x
