"""The pieces strategies compose: screening checks, grouped averaging (clip / average / apply), the FedAvg
exchange, logit queries, server-side distillation and reply metrics. No I/O: each works on plain records."""
