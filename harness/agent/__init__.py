"""The board agent's package, shipped to every board whole: the agent, its wire format, configuration and
backends. Python 3.8, standard library and numpy only."""
