"""splitrack's harness, in folders along the flow (see ARCHITECTURE.md): board/ (what runs on a board),
rack/ (rack files, SSH, deployment, virtual and local racks), measure/ (streaming, clock sync, attribution,
bench, run), results/ (history, regressions, dashboard, nightly), cosim/ (RTL cosimulation), cli/ (the
`splitrack` command), demo.py and pytest_plugin.py."""
