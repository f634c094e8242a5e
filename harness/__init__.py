"""splitrack's harness: boards, deployment, agent, virtual rack, pytest plugin, benchmarks, dashboard."""
