"""What leaves the process: OTel metrics and spans, alerts, JSON export, rules."""
