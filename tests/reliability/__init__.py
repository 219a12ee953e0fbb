"""Reliability under faults, hostile input and long runs: fault injection, smuggling, fuzzing, slowloris."""
