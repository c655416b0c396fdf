"""The node side of each method, one module per family as in server_app/strategies/: what a node trains or
answers for it, given the message and the loaded `Node`."""
