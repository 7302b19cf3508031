"""Ray actors as workers (the ``ray`` extra); imported only when ``RayRuntime`` is asked for."""
