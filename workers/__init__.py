"""What runs in the children: the user-facing API class, the inference worker, the API process."""
