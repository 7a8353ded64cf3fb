"""Statistical studies: replications, sweeps and paired strategy comparisons.

`spec` reads study files, `runner` drives them through an executor (`execute`) into a results
store (`store`), `summary`/`stats` turn rows into estimates, `plots` and `report` write the
outputs, and `cli` is the ``tdsim study`` subcommand.  The model never imports this package.
"""
