"""fedkd's ClientApp: the node side of every method (app.py routes each message type to its action in
actions/), over the node's data, kept models (node.py) and DP ledger (ledger.py)."""
