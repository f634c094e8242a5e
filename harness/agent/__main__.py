"""`python3 -m harness.agent CONFIG.json`: the agent's process on a board (or a virtual board, or a local rack).

Serves until SIGTERM, SIGINT or an authenticated SHUTDOWN. It prints one line to stdout when it listens:
`{"ready": true, "port": P, "pid": N}`, then logs to its log file only; its pidfile keeps a second agent of
the same config out. Shipped with the agent (Python 3.8, standard library and numpy).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

from harness.agent.agent import Agent
from harness.agent.agent_config import AgentConfig, AgentConfigError, config_path
from harness.agent.pidfile import remove_pidfile, write_pidfile


def main(argv=None):
    """Command line `python3 -m harness.agent CONFIG.json`: serve until SIGTERM, SIGINT or SHUTDOWN. Returns the
    exit status: 0 after a clean stop, 2 for bad usage, an unreadable config or a start failure, 3 when another
    agent holds the pidfile."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python3 -m harness.agent CONFIG.json", file=sys.stderr)
        return 2
    cfg_path = os.path.abspath(argv[0])
    base = os.path.dirname(cfg_path)
    try:
        with open(cfg_path) as f:
            cfg = AgentConfig.from_dict(json.load(f))
    except (OSError, ValueError, AgentConfigError) as e:
        print("agent: cannot read config %s: %s" % (cfg_path, e), file=sys.stderr)
        return 2
    part = cfg.partition
    log_path = config_path(cfg.log, base)
    pidfile = config_path(cfg.pidfile, base)
    logging.basicConfig(filename=log_path, level=logging.INFO,
                        format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s")
    log = logging.getLogger("splitrack.agent")
    try:
        write_pidfile(pidfile)
    except AgentConfigError as e:
        log.error("%s", e)
        print("agent: %s" % e, file=sys.stderr)
        return 3
    try:
        agent = Agent(cfg, base)
        port = agent.serve()
    except Exception as e:
        log.error("cannot start: %s", e, exc_info=not isinstance(e, AgentConfigError))
        print("agent %s: cannot start: %s" % (part, e), file=sys.stderr)
        os.unlink(pidfile)
        return 2
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=agent.shutdown, daemon=True).start())
    signal.signal(signal.SIGINT, lambda *a: threading.Thread(target=agent.shutdown, daemon=True).start())
    print(json.dumps({"ready": True, "port": port, "pid": os.getpid()}), flush=True)
    try:
        while not agent.stop.wait(0.5):
            pass
        agent.stopped.wait(5)  # the shutdown thread logs its last line before the process exits
    finally:
        remove_pidfile(pidfile)
        logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
