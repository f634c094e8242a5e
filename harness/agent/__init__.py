"""The board agent's package, shipped to every board whole (harness/agent/files.py) and started there as
`python3 -m harness.agent part/agent.json`: the agent, its wire format, configuration and backends. Python 3.8,
standard library and numpy only. Import-light: this file imports nothing."""
