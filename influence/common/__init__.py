"""Small helpers every layer may use: numerics shared by the solvers and operators (``numeric``),
atomic output files and content fingerprints (``files``), scipy version differences (``compat``),
structured errors (``errors``). Imports nothing else of the package."""
