"""The control plane: the admin HTTP app (in the supervisor), metrics, and `ferryman ctl`."""
