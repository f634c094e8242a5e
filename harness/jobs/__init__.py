"""Jobs that drive the whole flow on a rack: `bench` and `run` (deploy, stream, measure, write the result file
`splitrack history add` reads), `nightly` (bench, history, regressions, dashboard) and the `demo`."""
