"""The ``metamorphosis`` command: the top of the layers, over the library, the Flower app and its launchers."""
