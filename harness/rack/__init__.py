"""The rack: rack files (boards.toml), SSH, health checks, wiring of a plan onto boards, deployment, and local or virtual boards and racks."""
