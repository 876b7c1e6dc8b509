"""ml-collections configs: one ``get_config(arg)`` per experiment file (see each docstring)."""
