"""cuda-convnet models defined by the shipped config files (filled in by the cfg issue)."""
