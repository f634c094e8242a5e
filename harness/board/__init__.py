"""What runs on a board and is shipped there whole: the agent, its wire format and configuration. Python 3.8, stdlib and numpy only."""
