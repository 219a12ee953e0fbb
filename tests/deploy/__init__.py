"""Deployment tests: several real proxy processes behind a real balancer, restarted and killed under load."""
